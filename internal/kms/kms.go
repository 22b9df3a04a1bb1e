// Package kms is convoy's key management service: AWS KMS's symmetric keys
// over its JSON 1.1 protocol (X-Amz-Target: TrentService.*), and a Go API
// with which other convoy services (the object store's SSE-KMS, SageMaker)
// make and open data keys on behalf of their callers.
//
// Each key version is 32 random bytes, stored only sealed (sealbox) under
// the installation's master key. Encrypt uses the key's current version with
// AES-256-GCM; a ciphertext blob names its key and version (see blob.go), so
// material that rotation retired still decrypts what it encrypted. The
// encryption context is bound as associated data.
//
// Authorization follows AWS: the key policy and the caller's IAM policies
// are both consulted (authorize.go). Keys scheduled for deletion are deleted
// by a sweeper, and lazily by whatever request touches them first.
//
// Written by hand: AWS publishes only the client half of KMS, and the
// emulators that exist keep key material in plaintext and skip policies.
package kms

import (
	"context"
	"crypto/cipher"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"time"

	"convoy/internal/awsproto"
	"convoy/internal/iam"
	"convoy/internal/policy"
	"convoy/internal/sealbox"
	"convoy/internal/state"
)

// Service is the KMS implementation; it serves the KMS API as an
// http.Handler.
type Service struct {
	db      *state.DB
	box     *sealbox.Box
	iam     *iam.Store
	region  string
	account string
	log     *slog.Logger
	now     func() time.Time

	mu       sync.Mutex
	aeads    map[string]cipher.AEAD      // "keyID/version" → cipher
	policies map[string]*policy.Document // key policy text → parsed
}

// sweepEvery is how often deletions and automatic rotations that fell due
// are carried out (requests that touch such a key do it at once).
const sweepEvery = time.Minute

// Open migrates the KMS tables and returns the service. It starts a sweeper
// that deletes keys whose deletion window ended and rotates keys whose
// rotation is due; the sweeper stops when ctx is done.
func Open(ctx context.Context, db *state.DB, box *sealbox.Box, store *iam.Store, region string, log *slog.Logger) (*Service, error) {
	s, err := open(ctx, db, box, store, region, log)
	if err != nil {
		return nil, err
	}
	go s.sweepLoop(ctx, sweepEvery)
	return s, nil
}

// open is Open without the sweeper.
func open(ctx context.Context, db *state.DB, box *sealbox.Box, store *iam.Store, region string, log *slog.Logger) (*Service, error) {
	if region == "" {
		return nil, errors.New("kms: no region")
	}
	if err := db.Migrate(ctx, "kms", migrations); err != nil {
		return nil, err
	}
	return &Service{
		db: db, box: box, iam: store, region: region, account: store.AccountID(), log: log, now: time.Now,
		aeads: map[string]cipher.AEAD{}, policies: map[string]*policy.Document{},
	}, nil
}

func kmsError(code, format string, args ...any) *awsproto.Error {
	return awsproto.Errorf(http.StatusBadRequest, code, format, args...)
}

func validation(format string, args ...any) *awsproto.Error {
	return kmsError("ValidationException", format, args...)
}

func (s *Service) notFound(id string) *awsproto.Error {
	return kmsError("NotFoundException", "Key '%s' does not exist", s.keyARN(id))
}

func invalidCiphertext() *awsproto.Error {
	// One message for every cause: which check failed is not told.
	return kmsError("InvalidCiphertextException", "The ciphertext is invalid, or was not encrypted with this encryption context.")
}

func invalidState(k *key) *awsproto.Error {
	if k.State == statePendingDeletion {
		return kmsError("KMSInvalidStateException", "%s is pending deletion.", k.ARN)
	}
	return kmsError("KMSInvalidStateException", "%s is %s.", k.ARN, strings.ToLower(k.State))
}

// usable checks that k may encrypt and decrypt.
func usable(k *key) error {
	switch k.State {
	case stateEnabled:
		return nil
	case stateDisabled:
		return kmsError("DisabledException", "%s is disabled.", k.ARN)
	}
	return invalidState(k)
}

// internal turns an unexpected error into KMSInternalException (logged with
// its cause, which the caller does not see).
func (s *Service) internal(ctx context.Context, err error) *awsproto.Error {
	var ae *awsproto.Error
	if errors.As(err, &ae) {
		return ae
	}
	id := awsproto.RequestID(ctx)
	s.log.Error("kms operation failed", "err", err, "request_id", id)
	return awsproto.Errorf(http.StatusInternalServerError, "KMSInternalException", "internal error; request ID %s", id)
}

func (s *Service) keyARN(id string) string {
	return fmt.Sprintf("arn:aws:kms:%s:%s:key/%s", s.region, s.account, id)
}

func (s *Service) aliasARN(name string) string {
	return fmt.Sprintf("arn:aws:kms:%s:%s:%s", s.region, s.account, name)
}

// key loads a live key by ID, deleting it first if its window has ended.
func (s *Service) key(ctx context.Context, id string) (*key, error) {
	k, err := s.getKey(ctx, s.db, id)
	if errors.Is(err, errNoKey) {
		return nil, s.notFound(id)
	}
	if err != nil {
		return nil, err
	}
	if s.expired(k) {
		if err := s.purge(ctx, id); err != nil {
			return nil, err
		}
		return nil, s.notFound(id)
	}
	if k.State == stateDeleted {
		return nil, s.notFound(id)
	}
	return k, nil
}

var aliasNameRE = regexp.MustCompile(`^alias/[a-zA-Z0-9:/_-]+$`)

// managedServices are the services whose AWS managed key (alias/aws/NAME)
// is made on first reference, as AWS does.
var managedServices = map[string]bool{"s3": true, "sagemaker": true}

// resolve finds the key that ref names: a key ID, key ARN, alias name or
// alias ARN. alias is the alias name when ref named one.
func (s *Service) resolve(ctx context.Context, ref string) (k *key, alias string, err error) {
	if strings.HasPrefix(ref, "arn:") {
		parts := strings.SplitN(ref, ":", 6)
		if len(parts) != 6 || parts[1] != "aws" || parts[2] != "kms" ||
			!(strings.HasPrefix(parts[5], "key/") || strings.HasPrefix(parts[5], "alias/")) {
			return nil, "", kmsError("InvalidArnException", "%s is not a valid KMS key or alias ARN", ref)
		}
		if parts[3] != s.region || parts[4] != s.account {
			return nil, "", kmsError("NotFoundException", "%s is not in this account and region (%s, %s)", ref, s.account, s.region)
		}
		ref = parts[5]
		if id, ok := strings.CutPrefix(ref, "key/"); ok {
			if _, ok := parseUUID(id); !ok {
				return nil, "", kmsError("NotFoundException", "Invalid keyId '%s'", id)
			}
			k, err := s.key(ctx, strings.ToLower(id))
			return k, "", err
		}
	}
	if strings.HasPrefix(ref, "alias/") {
		var id string
		err := s.db.QueryRowContext(ctx, `SELECT key_id FROM kms_aliases WHERE name = ?`, ref).Scan(&id)
		if errors.Is(err, sql.ErrNoRows) {
			if svc, ok := strings.CutPrefix(ref, "alias/aws/"); ok && managedServices[svc] {
				arn, err := s.DefaultKey(ctx, ref)
				if err != nil {
					return nil, "", err
				}
				return s.resolveID(ctx, arn[strings.LastIndexByte(arn, '/')+1:], ref)
			}
			return nil, "", kmsError("NotFoundException", "Alias %s is not found.", s.aliasARN(ref))
		}
		if err != nil {
			return nil, "", fmt.Errorf("read alias %s: %w", ref, err)
		}
		return s.resolveID(ctx, id, ref)
	}
	if _, ok := parseUUID(ref); !ok {
		return nil, "", kmsError("NotFoundException", "Invalid keyId '%s'", ref)
	}
	return s.resolveID(ctx, strings.ToLower(ref), "")
}

func (s *Service) resolveID(ctx context.Context, id, alias string) (*key, string, error) {
	k, err := s.key(ctx, id)
	return k, alias, err
}

// newKey builds (without storing) a customer or AWS managed key.
func (s *Service) newKey(manager, description, keyPolicy string) *key {
	id := newKeyID()
	return &key{
		ID: id, ARN: s.keyARN(id), Description: description, Policy: keyPolicy, Manager: manager,
		State: stateEnabled, Created: s.now().UTC(), RotationPeriod: 365,
	}
}

// defaultPolicy is the key policy of a key created without one: it gives
// the account, that is IAM, control of the key.
func (s *Service) defaultPolicy() string {
	return `{"Version":"2012-10-17","Id":"key-default-1","Statement":[{"Sid":"Enable IAM User Permissions","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::` +
		s.account + `:root"},"Action":"kms:*","Resource":"*"}]}`
}

// managedPolicy is the key policy of the AWS managed key of a service: any
// principal of the account may use it through that service, and the account
// may read its metadata; nobody may manage it.
func (s *Service) managedPolicy(service string) string {
	return fmt.Sprintf(`{"Version":"2012-10-17","Id":"auto-%[1]s-1","Statement":[`+
		`{"Sid":"Allow access through %[1]s for all principals in the account that are authorized to use %[1]s","Effect":"Allow","Principal":{"AWS":"*"},"Action":["kms:Encrypt","kms:Decrypt","kms:ReEncrypt*","kms:GenerateDataKey*","kms:DescribeKey"],"Resource":"*","Condition":{"StringEquals":{"kms:CallerAccount":"%[2]s","kms:ViaService":"%[1]s.%[3]s.amazonaws.com"}}},`+
		`{"Sid":"Allow direct access to key metadata to the account","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::%[2]s:root"},"Action":["kms:Describe*","kms:Get*","kms:List*"],"Resource":"*"}]}`,
		service, s.account, s.region)
}

// GenerateDataKey makes a 32-byte data key under keyRef (id, ARN, alias or
// alias ARN) for principal p, authorizing kms:GenerateDataKey with
// kms:ViaService=via (e.g. "s3.us-east-1.amazonaws.com") and the encryption
// context.
func (s *Service) GenerateDataKey(ctx context.Context, p *iam.Principal, keyRef string, encCtx map[string]string, via string) (plaintext, blob []byte, keyARN string, err error) {
	k, err := s.useKey(ctx, p, "kms:GenerateDataKey", keyRef, encCtx, via)
	if err != nil {
		return nil, nil, "", s.internal(ctx, err)
	}
	plaintext, blob, err = s.generate(ctx, k, 32, encCtx)
	if err != nil {
		return nil, nil, "", s.internal(ctx, err)
	}
	return plaintext, blob, k.ARN, nil
}

// Decrypt decrypts a blob made by GenerateDataKey/Encrypt, authorizing
// kms:Decrypt for p the same way.
func (s *Service) Decrypt(ctx context.Context, p *iam.Principal, blob []byte, encCtx map[string]string, via string) (plaintext []byte, keyARN string, err error) {
	plaintext, k, _, err := s.decrypt(ctx, p, "kms:Decrypt", blob, encCtx, "", via)
	if err != nil {
		return nil, "", s.internal(ctx, err)
	}
	return plaintext, k.ARN, nil
}

var managedAliasRE = regexp.MustCompile(`^alias/aws/[a-z0-9-]{1,64}$`)

// DefaultKey returns the ARN of the AWS-managed key for alias (e.g.
// "alias/aws/s3"), creating it on first use (KeyManager AWS).
func (s *Service) DefaultKey(ctx context.Context, alias string) (keyARN string, err error) {
	if !managedAliasRE.MatchString(alias) {
		return "", validation("%q is not the alias of an AWS managed key (alias/aws/SERVICE)", alias)
	}
	service := strings.TrimPrefix(alias, "alias/aws/")
	created := false
	err = s.db.Tx(ctx, func(tx *sql.Tx) error {
		var id string
		err := tx.QueryRowContext(ctx, `SELECT key_id FROM kms_aliases WHERE name = ?`, alias).Scan(&id)
		if err == nil {
			keyARN = s.keyARN(id)
			return nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		k := s.newKey(managerAWS, fmt.Sprintf("Default key that protects my %s data when no other key is defined", service), s.managedPolicy(service))
		k.RotationEnabled = true // AWS rotates its managed keys every year
		k.NextRotation = k.Created.Add(days(k.RotationPeriod))
		if err := s.insertKey(ctx, tx, k); err != nil {
			return err
		}
		now := s.now().UnixMilli()
		if _, err := tx.ExecContext(ctx, `INSERT INTO kms_aliases (name, key_id, created, updated) VALUES (?, ?, ?, ?)`,
			alias, k.ID, now, now); err != nil {
			return err
		}
		keyARN, created = k.ARN, true
		return nil
	})
	if err != nil {
		return "", s.internal(ctx, fmt.Errorf("default key %s: %w", alias, err))
	}
	if created {
		s.log.Info("kms AWS managed key created", "key", keyARN, "alias", alias)
	}
	return keyARN, nil
}

// ResolveKeyARN returns the ARN of keyRef or a NotFoundException.
func (s *Service) ResolveKeyARN(ctx context.Context, keyRef string) (string, error) {
	if keyRef == "" {
		return "", kmsError("NotFoundException", "no key given")
	}
	k, _, err := s.resolve(ctx, keyRef)
	if err != nil {
		return "", s.internal(ctx, err)
	}
	return k.ARN, nil
}
