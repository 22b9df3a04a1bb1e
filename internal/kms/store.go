package kms

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

var migrations = []string{
	`CREATE TABLE kms_keys (
		key_id              TEXT PRIMARY KEY,
		description         TEXT NOT NULL DEFAULT '',
		policy              TEXT NOT NULL,
		key_manager         TEXT NOT NULL,           -- CUSTOMER | AWS
		state               TEXT NOT NULL,           -- Enabled | Disabled | PendingDeletion | Deleted
		created             INTEGER NOT NULL,        -- Unix milliseconds, as every time here
		deletion_date       INTEGER,                 -- while PendingDeletion
		pending_days        INTEGER,
		rotation_enabled    INTEGER NOT NULL DEFAULT 0,
		rotation_period     INTEGER NOT NULL DEFAULT 365,
		next_rotation       INTEGER,
		current_version     INTEGER NOT NULL,
		on_demand_rotations INTEGER NOT NULL DEFAULT 0,
		tags                TEXT NOT NULL DEFAULT '[]'  -- JSON [{"TagKey":…,"TagValue":…}]
	);
	CREATE INDEX kms_keys_state ON kms_keys (state);
	-- material_sealed is the version's 32-byte AES key sealed (sealbox) with
	-- the key ID and version as associated data; a Deleted key has no rows.
	CREATE TABLE kms_key_versions (
		key_id          TEXT NOT NULL REFERENCES kms_keys(key_id),
		version         INTEGER NOT NULL,
		material_sealed BLOB NOT NULL,
		created         INTEGER NOT NULL,
		rotation_type   TEXT NOT NULL DEFAULT '',    -- '' for the first, AUTOMATIC | ON_DEMAND
		PRIMARY KEY (key_id, version)
	);
	CREATE TABLE kms_aliases (
		name    TEXT PRIMARY KEY,                    -- alias/…
		key_id  TEXT NOT NULL REFERENCES kms_keys(key_id),
		created INTEGER NOT NULL,
		updated INTEGER NOT NULL
	);
	CREATE INDEX kms_aliases_key ON kms_aliases (key_id);`,
}

// Key states. Deleted is convoy's own: the row stays as a tombstone, with
// no key material, so that a blob of a deleted key says NotFoundException.
const (
	stateEnabled         = "Enabled"
	stateDisabled        = "Disabled"
	statePendingDeletion = "PendingDeletion"
	stateDeleted         = "Deleted"

	managerCustomer = "CUSTOMER"
	managerAWS      = "AWS"

	rotationAutomatic = "AUTOMATIC"
	rotationOnDemand  = "ON_DEMAND"

	materialSize = 32
	// maxOnDemandRotations is AWS's lifetime limit per key.
	maxOnDemandRotations = 10
)

type tag struct {
	TagKey   string
	TagValue string
}

// key is a row of kms_keys.
type key struct {
	ID, ARN           string
	Description       string
	Policy            string
	Manager           string
	State             string
	Created           time.Time
	DeletionDate      time.Time // zero unless PendingDeletion
	PendingDays       int
	RotationEnabled   bool
	RotationPeriod    int
	NextRotation      time.Time // zero unless RotationEnabled
	CurrentVersion    uint32
	OnDemandRotations int
	Tags              []tag
}

const keyColumns = `key_id, description, policy, key_manager, state, created, deletion_date, pending_days,
	rotation_enabled, rotation_period, next_rotation, current_version, on_demand_rotations, tags`

type queryer interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// errNoKey means no row exists for a key ID.
var errNoKey = errors.New("no such key")

func millis(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UnixMilli()
}

func fromMillis(v sql.NullInt64) time.Time {
	if !v.Valid {
		return time.Time{}
	}
	return time.UnixMilli(v.Int64).UTC()
}

func (s *Service) getKey(ctx context.Context, q queryer, id string) (*key, error) {
	var k key
	var created int64
	var deletion, pending, next sql.NullInt64
	var tags string
	err := q.QueryRowContext(ctx, `SELECT `+keyColumns+` FROM kms_keys WHERE key_id = ?`, id).Scan(
		&k.ID, &k.Description, &k.Policy, &k.Manager, &k.State, &created, &deletion, &pending,
		&k.RotationEnabled, &k.RotationPeriod, &next, &k.CurrentVersion, &k.OnDemandRotations, &tags)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, errNoKey
	}
	if err != nil {
		return nil, fmt.Errorf("read key %s: %w", id, err)
	}
	k.ARN = s.keyARN(k.ID)
	k.Created = time.UnixMilli(created).UTC()
	k.DeletionDate, k.NextRotation = fromMillis(deletion), fromMillis(next)
	k.PendingDays = int(pending.Int64)
	if err := json.Unmarshal([]byte(tags), &k.Tags); err != nil {
		return nil, fmt.Errorf("key %s: stored tags do not parse: %w", id, err)
	}
	return &k, nil
}

func (s *Service) insertKey(ctx context.Context, tx *sql.Tx, k *key) error {
	tags, _ := json.Marshal(nonNil(k.Tags))
	_, err := tx.ExecContext(ctx, `INSERT INTO kms_keys (`+keyColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		k.ID, k.Description, k.Policy, k.Manager, k.State, k.Created.UnixMilli(), millis(k.DeletionDate), nullInt(k.PendingDays),
		k.RotationEnabled, k.RotationPeriod, millis(k.NextRotation), 0, k.OnDemandRotations, string(tags))
	if err != nil {
		return fmt.Errorf("insert key: %w", err)
	}
	return s.addVersion(ctx, tx, k, "")
}

func (s *Service) saveKey(ctx context.Context, tx *sql.Tx, k *key) error {
	tags, _ := json.Marshal(nonNil(k.Tags))
	_, err := tx.ExecContext(ctx, `UPDATE kms_keys SET description = ?, policy = ?, state = ?, deletion_date = ?,
		pending_days = ?, rotation_enabled = ?, rotation_period = ?, next_rotation = ?, current_version = ?,
		on_demand_rotations = ?, tags = ? WHERE key_id = ?`,
		k.Description, k.Policy, k.State, millis(k.DeletionDate), nullInt(k.PendingDays), k.RotationEnabled,
		k.RotationPeriod, millis(k.NextRotation), k.CurrentVersion, k.OnDemandRotations, string(tags), k.ID)
	if err != nil {
		return fmt.Errorf("update key %s: %w", k.ID, err)
	}
	return nil
}

func nonNil(t []tag) []tag {
	if t == nil {
		return []tag{}
	}
	return t
}

func nullInt(n int) any {
	if n == 0 {
		return nil
	}
	return n
}

// addVersion makes new key material for k, seals it and makes it current.
// rotationType is "" for a key's first material.
func (s *Service) addVersion(ctx context.Context, tx *sql.Tx, k *key, rotationType string) error {
	material := make([]byte, materialSize)
	rand.Read(material)
	v := k.CurrentVersion + 1
	_, err := tx.ExecContext(ctx, `INSERT INTO kms_key_versions (key_id, version, material_sealed, created, rotation_type)
		VALUES (?, ?, ?, ?, ?)`, k.ID, v, s.box.Seal(material, materialAAD(k.ID, v)), s.now().UnixMilli(), rotationType)
	clear(material)
	if err != nil {
		return fmt.Errorf("store key material of %s: %w", k.ID, err)
	}
	k.CurrentVersion = v
	_, err = tx.ExecContext(ctx, `UPDATE kms_keys SET current_version = ? WHERE key_id = ?`, v, k.ID)
	return err
}

// materialAAD binds sealed material to its key and version: a sealed value
// copied to another row does not open.
func materialAAD(keyID string, version uint32) []byte {
	return []byte("convoy/kms/key-material/v1\x00" + keyID + "\x00" + strconv.FormatUint(uint64(version), 10))
}

// keyMaterialID is the public name of a key version (KeyMaterialId: 64 hex
// digits); it is derived from the key ID and version, never the material.
func keyMaterialID(keyID string, version uint32) string {
	sum := sha256.Sum256(materialAAD(keyID, version))
	return hex.EncodeToString(sum[:])
}

// cipherFor returns the AEAD of one version of a key's material, or
// errNoKey when that version does not exist (or the key was deleted).
func (s *Service) cipherFor(ctx context.Context, keyID string, version uint32) (cipher.AEAD, error) {
	name := keyID + "/" + strconv.FormatUint(uint64(version), 10)
	s.mu.Lock()
	aead, ok := s.aeads[name]
	s.mu.Unlock()
	if ok {
		return aead, nil
	}
	var sealed []byte
	err := s.db.QueryRowContext(ctx, `SELECT material_sealed FROM kms_key_versions WHERE key_id = ? AND version = ?`,
		keyID, version).Scan(&sealed)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, errNoKey
	}
	if err != nil {
		return nil, fmt.Errorf("read key material %s: %w", name, err)
	}
	material, err := s.box.Open(sealed, materialAAD(keyID, version))
	if err != nil {
		return nil, fmt.Errorf("key material %s: %w", name, err)
	}
	defer clear(material)
	block, err := aes.NewCipher(material)
	if err != nil {
		return nil, err
	}
	if aead, err = cipher.NewGCMWithRandomNonce(block); err != nil { // FIPS-approved; see sealBlob
		return nil, err
	}
	s.mu.Lock()
	if len(s.aeads) >= 10000 {
		clear(s.aeads)
	}
	s.aeads[name] = aead
	s.mu.Unlock()
	return aead, nil
}

// update runs fn on the current row of a key inside a transaction and
// writes back what fn changed. fn's error aborts the change.
func (s *Service) update(ctx context.Context, id string, fn func(tx *sql.Tx, k *key) error) (*key, error) {
	var out *key
	err := s.db.Tx(ctx, func(tx *sql.Tx) error {
		k, err := s.getKey(ctx, tx, id)
		if errors.Is(err, errNoKey) || (err == nil && (k.State == stateDeleted || s.expired(k))) {
			return s.notFound(id)
		}
		if err != nil {
			return err
		}
		if err := fn(tx, k); err != nil {
			return err
		}
		out = k
		return s.saveKey(ctx, tx, k)
	})
	return out, err
}

// expired reports whether k's deletion window has ended.
func (s *Service) expired(k *key) bool {
	return k.State == statePendingDeletion && !s.now().Before(k.DeletionDate)
}

// purge deletes a key whose deletion window has ended: its material is
// destroyed (every ciphertext under it becomes unrecoverable) and its
// aliases removed; the row stays, as state Deleted.
func (s *Service) purge(ctx context.Context, id string) error {
	done := false
	err := s.db.Tx(ctx, func(tx *sql.Tx) error {
		k, err := s.getKey(ctx, tx, id)
		if err != nil || !s.expired(k) {
			return err
		}
		for _, q := range []string{
			`DELETE FROM kms_key_versions WHERE key_id = ?`,
			`DELETE FROM kms_aliases WHERE key_id = ?`,
			`UPDATE kms_keys SET state = 'Deleted', policy = '', tags = '[]', rotation_enabled = 0, next_rotation = NULL WHERE key_id = ?`,
		} {
			if _, err := tx.ExecContext(ctx, q, id); err != nil {
				return fmt.Errorf("delete key %s: %w", id, err)
			}
		}
		done = true
		return nil
	})
	if err != nil {
		return err
	}
	if done {
		s.mu.Lock()
		for name := range s.aeads {
			if strings.HasPrefix(name, id+"/") {
				delete(s.aeads, name)
			}
		}
		s.mu.Unlock()
		s.log.Info("kms key deleted: its key material is destroyed", "key", s.keyARN(id))
	}
	return nil
}

// purgeExpired deletes every key whose deletion window has ended.
func (s *Service) purgeExpired(ctx context.Context) error {
	expired, err := s.keyIDs(ctx, `SELECT key_id FROM kms_keys WHERE state = 'PendingDeletion' AND deletion_date <= ?`)
	if err != nil {
		return fmt.Errorf("find expired keys: %w", err)
	}
	for _, id := range expired {
		if err := s.purge(ctx, id); err != nil {
			return err
		}
	}
	return nil
}

// rotateDue rotates the enabled keys whose automatic rotation is due.
func (s *Service) rotateDue(ctx context.Context) error {
	due, err := s.keyIDs(ctx, `SELECT key_id FROM kms_keys WHERE state = 'Enabled' AND rotation_enabled = 1 AND next_rotation <= ?`)
	if err != nil {
		return fmt.Errorf("find keys due for rotation: %w", err)
	}
	for _, id := range due {
		rotated := false
		k, err := s.update(ctx, id, func(tx *sql.Tx, k *key) error {
			if !k.RotationEnabled || k.State != stateEnabled || s.now().Before(k.NextRotation) {
				return nil
			}
			k.NextRotation = s.now().UTC().Add(days(k.RotationPeriod))
			rotated = true
			return s.addVersion(ctx, tx, k, rotationAutomatic)
		})
		if err != nil {
			return err
		}
		if rotated {
			s.log.Info("kms key rotated", "key", k.ARN, "rotation", rotationAutomatic, "version", k.CurrentVersion)
		}
	}
	return nil
}

// keyIDs runs a query of key IDs with the current time as its argument.
func (s *Service) keyIDs(ctx context.Context, q string) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, q, s.now().UnixMilli())
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		out = append(out, id)
	}
	return out, rows.Err()
}

func (s *Service) sweepLoop(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if err := firstError(s.purgeExpired(ctx), s.rotateDue(ctx)); err != nil && ctx.Err() == nil {
			s.log.Error("kms sweep failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func days(n int) time.Duration { return time.Duration(n) * 24 * time.Hour }

type versionRow struct {
	version      uint32
	created      time.Time
	rotationType string
}

func (s *Service) versions(ctx context.Context, keyID string) ([]versionRow, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT version, created, rotation_type FROM kms_key_versions
		WHERE key_id = ? ORDER BY version`, keyID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []versionRow
	for rows.Next() {
		var v versionRow
		var created int64
		if err := rows.Scan(&v.version, &created, &v.rotationType); err != nil {
			return nil, err
		}
		v.created = time.UnixMilli(created).UTC()
		out = append(out, v)
	}
	return out, rows.Err()
}
