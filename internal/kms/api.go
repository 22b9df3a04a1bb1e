package kms

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"convoy/internal/awsproto"
	"convoy/internal/iam"
)

// targetPrefix is the X-Amz-Target prefix of KMS operations.
const targetPrefix = "TrentService."

// maxRequestBody bounds a KMS request; the largest valid one (a 6144-byte
// blob with contexts and a 32 KiB policy) is far smaller.
const maxRequestBody = 1 << 20

type call struct {
	ctx  context.Context
	p    *iam.Principal
	body []byte
}

type operation func(*Service, *call) (any, error)

var operations = map[string]operation{
	"CreateKey":                       (*Service).createKey,
	"DescribeKey":                     (*Service).describeKey,
	"ListKeys":                        (*Service).listKeys,
	"CreateAlias":                     (*Service).createAlias,
	"ListAliases":                     (*Service).listAliases,
	"UpdateAlias":                     (*Service).updateAlias,
	"DeleteAlias":                     (*Service).deleteAlias,
	"EnableKey":                       (*Service).enableKey,
	"DisableKey":                      (*Service).disableKey,
	"ScheduleKeyDeletion":             (*Service).scheduleKeyDeletion,
	"CancelKeyDeletion":               (*Service).cancelKeyDeletion,
	"Encrypt":                         (*Service).encryptOp,
	"Decrypt":                         (*Service).decryptOp,
	"GenerateDataKey":                 (*Service).generateDataKey,
	"GenerateDataKeyWithoutPlaintext": (*Service).generateDataKeyWithoutPlaintext,
	"ReEncrypt":                       (*Service).reEncrypt,
	"GenerateRandom":                  (*Service).generateRandom,
	"EnableKeyRotation":               (*Service).enableKeyRotation,
	"DisableKeyRotation":              (*Service).disableKeyRotation,
	"GetKeyRotationStatus":            (*Service).getKeyRotationStatus,
	"RotateKeyOnDemand":               (*Service).rotateKeyOnDemand,
	"ListKeyRotations":                (*Service).listKeyRotations,
	"GetKeyPolicy":                    (*Service).getKeyPolicy,
	"PutKeyPolicy":                    (*Service).putKeyPolicy,
	"ListResourceTags":                (*Service).listResourceTags,
	"TagResource":                     (*Service).tagResource,
	"UntagResource":                   (*Service).untagResource,
}

// ServeHTTP serves the KMS JSON 1.1 API. Requests reach it authenticated,
// with the caller's principal in their context.
func (s *Service) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	target := r.Header.Get("X-Amz-Target")
	name, ok := strings.CutPrefix(target, targetPrefix)
	op := operations[name]
	if !ok || op == nil || r.Method != http.MethodPost {
		s.writeError(w, r, kmsError("UnknownOperationException", "operation %q is not a KMS operation supported by convoy", target))
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxRequestBody))
	if err != nil {
		s.writeError(w, r, kmsError("SerializationException", "the request body could not be read (at most %d bytes)", maxRequestBody))
		return
	}
	out, err := op(s, &call{ctx: r.Context(), p: iam.PrincipalFrom(r.Context()), body: body})
	if err != nil {
		s.writeError(w, r, s.internal(r.Context(), err))
		return
	}
	if err := awsproto.WriteJSON(w, out); err != nil {
		s.writeError(w, r, s.internal(r.Context(), fmt.Errorf("encode %s response: %w", name, err)))
	}
}

func (s *Service) writeError(w http.ResponseWriter, r *http.Request, err *awsproto.Error) {
	awsproto.WriteError(w, r, awsproto.JSON, err)
}

// decode reads the request body into v. An empty body is an empty input.
func (c *call) decode(v any) error { return awsproto.DecodeJSON(c.body, v) }

// epochTime is a timestamp as the JSON protocols write it: seconds since
// the epoch, as a number.
type epochTime time.Time

func (t epochTime) MarshalJSON() ([]byte, error) {
	return []byte(strconv.FormatFloat(float64(time.Time(t).UnixMilli())/1000, 'f', -1, 64)), nil
}

func epoch(t time.Time) *epochTime {
	if t.IsZero() {
		return nil
	}
	e := epochTime(t)
	return &e
}

// Validation of parameters, in the words AWS uses.

func missing(field string) error {
	return validation("1 validation error detected: Value null at '%s' failed to satisfy constraint: Member must not be null", field)
}

func checkLength(field string, n, lo, hi int) error {
	switch {
	case n < lo:
		return validation("1 validation error detected: Value at '%s' failed to satisfy constraint: Member must have length greater than or equal to %d", field, lo)
	case n > hi:
		return validation("1 validation error detected: Value at '%s' failed to satisfy constraint: Member must have length less than or equal to %d", field, hi)
	}
	return nil
}

func checkRange(field string, v, lo, hi int) error {
	switch {
	case v < lo:
		return validation("1 validation error detected: Value '%d' at '%s' failed to satisfy constraint: Member must have value greater than or equal to %d", v, field, lo)
	case v > hi:
		return validation("1 validation error detected: Value '%d' at '%s' failed to satisfy constraint: Member must have value less than or equal to %d", v, field, hi)
	}
	return nil
}

func checkEnum(field, v string, allowed ...string) error {
	for _, a := range allowed {
		if v == a {
			return nil
		}
	}
	return validation("1 validation error detected: Value '%s' at '%s' failed to satisfy constraint: Member must satisfy enum value set: [%s]",
		v, field, strings.Join(allowed, ", "))
}

func checkKeyRef(field, v string) error {
	if v == "" {
		return missing(field)
	}
	return checkLength(field, len(v), 1, 2048)
}

func checkGrantTokens(t []string) error {
	return checkLength("grantTokens", len(t), 0, 10)
}

func checkAlgorithm(field, v string) error {
	switch v {
	case "", "SYMMETRIC_DEFAULT":
		return nil
	case "RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256", "SM2PKE":
		return kmsError("InvalidKeyUsageException", "%s is not a valid encryption algorithm for a SYMMETRIC_DEFAULT key", v)
	}
	return checkEnum(field, v, "SYMMETRIC_DEFAULT", "RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256", "SM2PKE")
}

func checkBlob(field string, b []byte) error {
	if b == nil {
		return missing(field)
	}
	return checkLength(field, len(b), 1, maxBlobLen)
}

func checkLimit(limit *int, def int) (int, error) {
	if limit == nil {
		return def, nil
	}
	return *limit, checkRange("limit", *limit, 1, 1000)
}

func dryRun() error {
	return kmsError("DryRunOperationException", "The request would have succeeded, but the DryRun option is set.")
}

func customerManaged(k *key, op string) error {
	if k.Manager == managerAWS {
		return kmsError("UnsupportedOperationException", "%s is an AWS managed key: %s is not allowed on it", k.ARN, op)
	}
	return nil
}

// target resolves the key of a single-key operation and authorizes action.
func (s *Service) target(c *call, action, ref string, cond map[string][]string) (*key, error) {
	if err := checkKeyRef("keyId", ref); err != nil {
		return nil, err
	}
	k, alias, err := s.resolve(c.ctx, ref)
	if err != nil {
		return nil, err
	}
	if alias != "" {
		if cond == nil {
			cond = map[string][]string{}
		}
		cond["kms:RequestAlias"] = []string{alias}
	}
	return k, s.authorizeKey(c.ctx, c.p, action, k, cond)
}

type keyMetadata struct {
	AWSAccountId                string
	KeyId                       string
	Arn                         string
	CreationDate                *epochTime
	Enabled                     bool
	Description                 string
	KeyUsage                    string
	KeyState                    string
	DeletionDate                *epochTime `json:",omitempty"`
	Origin                      string
	KeyManager                  string
	CustomerMasterKeySpec       string
	KeySpec                     string
	EncryptionAlgorithms        []string
	MultiRegion                 bool
	PendingDeletionWindowInDays int    `json:",omitempty"`
	CurrentKeyMaterialId        string `json:",omitempty"`
}

func (s *Service) metadata(k *key) keyMetadata {
	m := keyMetadata{
		AWSAccountId: s.account, KeyId: k.ID, Arn: k.ARN, CreationDate: epoch(k.Created),
		Enabled: k.State == stateEnabled, Description: k.Description, KeyUsage: "ENCRYPT_DECRYPT",
		KeyState: k.State, Origin: "AWS_KMS", KeyManager: k.Manager, CustomerMasterKeySpec: "SYMMETRIC_DEFAULT",
		KeySpec: "SYMMETRIC_DEFAULT", EncryptionAlgorithms: []string{"SYMMETRIC_DEFAULT"},
		CurrentKeyMaterialId: keyMaterialID(k.ID, k.CurrentVersion),
	}
	if k.State == statePendingDeletion {
		m.DeletionDate, m.PendingDeletionWindowInDays = epoch(k.DeletionDate), k.PendingDays
	}
	return m
}

type keyMetadataOutput struct{ KeyMetadata keyMetadata }

type keyIDInput struct {
	KeyId       string
	GrantTokens []string
}

type keyIDOutput struct{ KeyId string }

type empty struct{}
