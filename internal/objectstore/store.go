// Package objectstore is convoy's S3-compatible artifact store (rest-xml,
// path-style and virtual-host addressing).
//
// Every object byte on disk is encrypted and authenticated (package sealed)
// with a per-object data key: from KMS when the object is SSE-KMS, otherwise
// sealed under the installation's master key (what S3 calls SSE-S3). Object
// metadata (content type, user metadata) is sealed too. A write goes to a
// temporary file, is synced and renamed into place, and only then is the
// metadata committed: an acknowledged PUT survives a crash, and a crash
// mid-upload leaves only files that no metadata references, which are
// collected at the next start.
//
// The S3 API is written by hand: the Go S3 servers that exist (MinIO,
// gofakes3) are either a product of their own or a test double without
// encryption at rest, durability or IAM.
package objectstore

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"convoy/internal/fsutil"
	"convoy/internal/iam"
	"convoy/internal/sealbox"
	"convoy/internal/state"
)

var migrations = []string{
	`CREATE TABLE s3_buckets (
		name       TEXT PRIMARY KEY,
		created    TEXT NOT NULL,
		encryption TEXT NOT NULL DEFAULT '',  -- ServerSideEncryptionConfiguration XML, '' = SSE-S3 default
		policy     TEXT NOT NULL DEFAULT ''
	);
	CREATE TABLE s3_objects (
		bucket        TEXT NOT NULL REFERENCES s3_buckets(name),
		key           TEXT NOT NULL,
		object_id     TEXT NOT NULL UNIQUE,
		size          INTEGER NOT NULL,
		etag          TEXT NOT NULL,
		modified      TEXT NOT NULL,
		sse           TEXT NOT NULL,           -- 'aws:kms' or 'AES256'
		kms_key_arn   TEXT NOT NULL DEFAULT '',
		data_key      BLOB NOT NULL,           -- KMS ciphertext blob, or sealed under the master key
		meta_sealed   BLOB NOT NULL,           -- content type and user metadata, sealed under the master key
		checksum_algo TEXT NOT NULL DEFAULT '',
		checksum      TEXT NOT NULL DEFAULT '',
		PRIMARY KEY (bucket, key)
	);
	CREATE TABLE s3_extents (
		object_id  TEXT NOT NULL,
		idx        INTEGER NOT NULL,
		file       TEXT NOT NULL UNIQUE,
		size       INTEGER NOT NULL,
		PRIMARY KEY (object_id, idx)
	);
	CREATE TABLE s3_uploads (
		upload_id   TEXT PRIMARY KEY,
		bucket      TEXT NOT NULL,
		key         TEXT NOT NULL,
		object_id   TEXT NOT NULL UNIQUE,
		initiated   TEXT NOT NULL,
		sse         TEXT NOT NULL,
		kms_key_arn TEXT NOT NULL DEFAULT '',
		data_key    BLOB NOT NULL,
		meta_sealed BLOB NOT NULL,
		checksum_algo TEXT NOT NULL DEFAULT ''
	);
	CREATE TABLE s3_parts (
		upload_id   TEXT NOT NULL REFERENCES s3_uploads(upload_id) ON DELETE CASCADE,
		part_number INTEGER NOT NULL,
		file        TEXT NOT NULL UNIQUE,
		size        INTEGER NOT NULL,
		etag        TEXT NOT NULL,
		checksum    TEXT NOT NULL DEFAULT '',
		modified    TEXT NOT NULL,
		PRIMARY KEY (upload_id, part_number)
	);`,
}

// KeyService is what the store needs of KMS.
type KeyService interface {
	GenerateDataKey(ctx context.Context, p *iam.Principal, keyRef string, encCtx map[string]string, via string) (plaintext, blob []byte, keyARN string, err error)
	Decrypt(ctx context.Context, p *iam.Principal, blob []byte, encCtx map[string]string, via string) (plaintext []byte, keyARN string, err error)
	DefaultKey(ctx context.Context, alias string) (keyARN string, err error)
}

// Config configures a Store.
type Config struct {
	Dir    string // objects live in Dir/<xx>/<file id>; Dir/tmp holds writes in progress
	DB     *state.DB
	Box    *sealbox.Box
	KMS    KeyService
	IAM    *iam.Store
	Region string
	Log    *slog.Logger
	// VirtualHosts are the host names under which "<bucket>.<name>"
	// addresses a bucket (virtual-host style).
	VirtualHosts []string
	Registry     prometheus.Registerer
}

// Store is the object store.
type Store struct {
	cfg     Config
	db      *state.DB
	log     *slog.Logger
	metrics *metrics
}

// Open migrates the tables, prepares the directories and removes whatever
// an earlier crash left behind.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if err := cfg.DB.Migrate(ctx, "objectstore", migrations); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(cfg.Dir, "tmp"), 0o700); err != nil {
		return nil, err
	}
	s := &Store{cfg: cfg, db: cfg.DB, log: cfg.Log}
	s.metrics = newMetrics(cfg.Registry, s)
	removed, err := s.collectGarbage(ctx)
	if err != nil {
		return nil, fmt.Errorf("object store garbage collection: %w", err)
	}
	if removed > 0 {
		s.log.Info("removed files left by an interrupted write", "files", removed)
	}
	return s, nil
}

// collectGarbage deletes temporary files and every object file that no
// object or upload part references. It runs before the store serves, so no
// write can be in flight.
func (s *Store) collectGarbage(ctx context.Context) (int, error) {
	tmp := filepath.Join(s.cfg.Dir, "tmp")
	entries, err := os.ReadDir(tmp)
	if err != nil {
		return 0, err
	}
	removed := 0
	for _, e := range entries {
		if os.Remove(filepath.Join(tmp, e.Name())) == nil {
			removed++
		}
	}
	live := map[string]bool{}
	for _, q := range []string{`SELECT file FROM s3_extents`, `SELECT file FROM s3_parts`} {
		rows, err := s.db.QueryContext(ctx, q)
		if err != nil {
			return removed, err
		}
		for rows.Next() {
			var f string
			rows.Scan(&f)
			live[f] = true
		}
		rows.Close()
	}
	dirs, err := os.ReadDir(s.cfg.Dir)
	if err != nil {
		return removed, err
	}
	for _, d := range dirs {
		if !d.IsDir() || len(d.Name()) != 2 {
			continue
		}
		files, err := os.ReadDir(filepath.Join(s.cfg.Dir, d.Name()))
		if err != nil {
			return removed, err
		}
		for _, f := range files {
			if !live[f.Name()] && os.Remove(filepath.Join(s.cfg.Dir, d.Name(), f.Name())) == nil {
				removed++
			}
		}
	}
	return removed, nil
}

func newID() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// filePath is where an object file lives.
func (s *Store) filePath(id string) string {
	return filepath.Join(s.cfg.Dir, id[:2], id)
}

// removeFiles deletes object files after the metadata that referenced them
// is gone. A failure only leaves garbage for the next start.
func (s *Store) removeFiles(files []string) {
	for _, f := range files {
		if err := os.Remove(s.filePath(f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.log.Warn("remove object file; it will be collected at the next start", "file", f, "err", err)
		}
	}
}

func now() time.Time { return time.Now().UTC() }

const timeLayout = time.RFC3339Nano

// promote moves a finished temporary file into place durably.
func (s *Store) promote(tmp, id string) error {
	dir := filepath.Join(s.cfg.Dir, id[:2])
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := os.Rename(tmp, s.filePath(id)); err != nil {
		return err
	}
	return fsutil.SyncDir(dir)
}

// bucketExists reports whether a bucket exists.
func (s *Store) bucketExists(ctx context.Context, bucket string) (bool, error) {
	var one int
	err := s.db.QueryRowContext(ctx, `SELECT 1 FROM s3_buckets WHERE name = ?`, bucket).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	return err == nil, err
}

func (s *Store) bucketARN(bucket string) string { return "arn:aws:s3:::" + bucket }

func (s *Store) objectARN(bucket, key string) string { return "arn:aws:s3:::" + bucket + "/" + key }

func (s *Store) via() string { return "s3." + s.cfg.Region + ".amazonaws.com" }

// encryptionContext is the KMS encryption context S3 binds to an object.
func (s *Store) encryptionContext(bucket, key string) map[string]string {
	return map[string]string{"aws:s3:arn": s.objectARN(bucket, key)}
}

func isDotSegment(key string) bool {
	for _, seg := range strings.Split(key, "/") {
		if seg == "." || seg == ".." {
			return true
		}
	}
	return false
}
