package kms

import (
	"testing"

	"convoy/internal/iam"
)

// A session policy limits what a role session gets from a key policy that
// names the role ARN; only a key policy naming the session ARN is outside
// it, as for every resource-based policy on AWS. A session of the same role
// without a session policy, or one the key policy names itself, decrypts.
func TestSessionPolicyLimitsKeyPolicyNamingRole(t *testing.T) {
	e := newEnv(t)
	trust := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"` + e.admin.ARN + `"},"Action":"sts:AssumeRole"}]}`
	role, err := e.iam.CreateRole(e.ctx, iam.Role{Name: "app", Trust: trust})
	if err != nil {
		t.Fatal(err)
	}
	acct := e.iam.AccountID()
	keyPolicy := `{"Version":"2012-10-17","Statement":[` +
		`{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::` + acct + `:root"},"Action":"kms:*","Resource":"*"},` +
		`{"Effect":"Allow","Principal":{"AWS":"` + role.ARN + `"},"Action":"kms:Decrypt","Resource":"*"}]}`
	id := e.createKey(map[string]any{"Policy": keyPolicy})
	blob := e.encrypt(e.admin, id, []byte("payroll"), nil)

	session := &iam.Principal{ARN: "arn:aws:sts::" + acct + ":assumed-role/app/s", AccountID: acct, UserID: role.ID + ":s",
		Kind: iam.KindAssumedRole, Name: "app", SessionName: "s", RoleARN: role.ARN, Temporary: true,
		SessionPolicy: `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:ListAllMyBuckets","Resource":"*"}]}`}
	if _, err := e.call(session, "Decrypt", map[string]any{"CiphertextBlob": blob}); err == nil {
		t.Fatal("a session whose session policy allows no KMS action decrypted through a key policy naming its role")
	}
	plain := *session
	plain.SessionPolicy = ""
	if _, err := e.call(&plain, "Decrypt", map[string]any{"CiphertextBlob": blob}); err != nil {
		t.Errorf("a session without a session policy, through a key policy naming its role: %v", err)
	}
}

// Regression: the AWS managed key of S3 (alias/aws/s3) may be used only
// through S3 (kms:ViaService); a caller without any IAM permission cannot
// decrypt its blobs directly, nor can it pass a blob of one key as another
// key's (IncorrectKeyException), nor open a blob under another context.
func TestManagedKeyOnlyViaService(t *testing.T) {
	e := newEnv(t)
	arn, err := e.kms.DefaultKey(e.ctx, "alias/aws/s3")
	if err != nil {
		t.Fatal(err)
	}
	encCtx := map[string]string{"aws:s3:arn": "arn:aws:s3:::b/k"}
	pt, blob, _, err := e.kms.GenerateDataKey(e.ctx, e.admin, arn, encCtx, "s3.us-east-1.amazonaws.com")
	if err != nil || len(pt) != 32 {
		t.Fatalf("GenerateDataKey via s3: %v", err)
	}
	nobody := e.user("nobody")
	if _, err := e.call(nobody, "Decrypt", map[string]any{"CiphertextBlob": blob, "EncryptionContext": encCtx}); code(err) != "AccessDeniedException" && code(err) != "AccessDenied" {
		t.Fatalf("direct Decrypt of an S3 managed-key blob by a user without permissions: %v", err)
	}
	if _, _, err := e.kms.Decrypt(e.ctx, nobody, blob, encCtx, "sagemaker.us-east-1.amazonaws.com"); err == nil {
		t.Fatal("Decrypt via another service succeeded")
	}
	if _, _, err := e.kms.Decrypt(e.ctx, e.admin, blob, map[string]string{"aws:s3:arn": "arn:aws:s3:::b/other"}, "s3.us-east-1.amazonaws.com"); err == nil {
		t.Fatal("Decrypt under another encryption context succeeded")
	}
	other := e.createKey(nil)
	if _, err := e.call(e.admin, "Decrypt", map[string]any{"CiphertextBlob": blob, "EncryptionContext": encCtx, "KeyId": other}); code(err) != "IncorrectKeyException" {
		t.Fatalf("Decrypt naming another key: %v", err)
	}
}
