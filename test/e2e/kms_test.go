package e2e

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"convoy/test/e2e/harness"
)

// blobField decodes a base64 blob field of an aws CLI JSON output.
func blobField(t *testing.T, out map[string]any, field string) []byte {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(str(out, field))
	if err != nil || len(b) == 0 {
		t.Fatalf("%s is not a base64 blob: %v\n%v", field, err, out)
	}
	return b
}

func writeFile(t *testing.T, path string, data []byte) string {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// KMS through both aws CLIs: encrypt/decrypt round trips of binary data,
// the encryption context, key states, rotation, aliases, and authorization
// by IAM policy and key policy together.
func TestKMSWithAWSCLIs(t *testing.T) {
	c := harness.Start(t, harness.Options{})
	for name, cli := range harness.AWSCLIs(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			tag := strings.NewReplacer("/", "-", ".", "-").Replace(name)
			dir := t.TempDir()
			key := awsJSON(t, c, cli, []string{"kms", "create-key", "--description", "e2e " + name,
				"--tags", "TagKey=suite,TagValue=e2e"})
			keyID, keyARN := str(key, "KeyMetadata", "KeyId"), str(key, "KeyMetadata", "Arn")
			if !strings.HasPrefix(keyARN, "arn:aws:kms:") || !strings.HasSuffix(keyARN, ":key/"+keyID) ||
				str(key, "KeyMetadata", "KeyState") != "Enabled" {
				t.Fatalf("create-key: %v", key)
			}

			plain := make([]byte, 4096) // the largest plaintext, every byte value
			rand.Read(plain)
			plainFile := writeFile(t, filepath.Join(dir, "plain.bin"), plain)
			encCtx := []string{"--encryption-context", "purpose=e2e,cli=" + tag}
			enc := awsJSON(t, c, cli, append([]string{"kms", "encrypt", "--key-id", keyID, "--plaintext", "fileb://" + plainFile}, encCtx...))
			if str(enc, "KeyId") != keyARN || str(enc, "EncryptionAlgorithm") != "SYMMETRIC_DEFAULT" {
				t.Fatalf("encrypt: %v", enc)
			}
			blob := blobField(t, enc, "CiphertextBlob")
			if bytes.Contains(blob, plain[:64]) {
				t.Fatal("plaintext visible in the ciphertext")
			}
			blobFile := writeFile(t, filepath.Join(dir, "blob.bin"), blob)
			decrypt := append([]string{"kms", "decrypt", "--ciphertext-blob", "fileb://" + blobFile}, encCtx...)
			roundTrip := func(env ...string) {
				t.Helper()
				dec := awsJSON(t, c, cli, decrypt, env...)
				if !bytes.Equal(blobField(t, dec, "Plaintext"), plain) || str(dec, "KeyId") != keyARN {
					t.Fatalf("decrypt does not give back the plaintext: %v", dec)
				}
			}
			roundTrip()

			// The encryption context is bound to the ciphertext.
			awsFails(t, c, cli, "InvalidCiphertextException", []string{"kms", "decrypt", "--ciphertext-blob", "fileb://" + blobFile,
				"--encryption-context", "purpose=other,cli=" + tag})
			awsFails(t, c, cli, "InvalidCiphertextException", []string{"kms", "decrypt", "--ciphertext-blob", "fileb://" + blobFile})
			tampered := bytes.Clone(blob)
			tampered[len(tampered)/2] ^= 0x40
			tamperedFile := writeFile(t, filepath.Join(dir, "tampered.bin"), tampered)
			awsFails(t, c, cli, "InvalidCiphertextException", append([]string{"kms", "decrypt", "--ciphertext-blob", "fileb://" + tamperedFile}, encCtx...))

			// Disabled keys neither encrypt nor decrypt, until re-enabled.
			awsJSON(t, c, cli, []string{"kms", "disable-key", "--key-id", keyID})
			awsFails(t, c, cli, "DisabledException", []string{"kms", "encrypt", "--key-id", keyID, "--plaintext", "fileb://" + plainFile})
			awsFails(t, c, cli, "DisabledException", decrypt)
			awsJSON(t, c, cli, []string{"kms", "enable-key", "--key-id", keyID})
			roundTrip()

			// Rotation: old ciphertexts still decrypt. The Debian aws CLI v2
			// predates rotate-key-on-demand; it enables yearly rotation.
			if r := c.AWS(t, cli, []string{"kms", "rotate-key-on-demand", "--key-id", keyID}); r.Err == nil {
				rot := awsJSON(t, c, cli, []string{"kms", "list-key-rotations", "--key-id", keyID})
				if list, _ := rot["Rotations"].([]any); len(list) != 1 {
					t.Fatalf("list-key-rotations after one rotation: %v", rot)
				}
			} else if strings.Contains(r.Stderr, "Invalid choice") {
				awsJSON(t, c, cli, []string{"kms", "enable-key-rotation", "--key-id", keyID})
				st := awsJSON(t, c, cli, []string{"kms", "get-key-rotation-status", "--key-id", keyID})
				if st["KeyRotationEnabled"] != true {
					t.Fatalf("get-key-rotation-status: %v", st)
				}
			} else {
				t.Fatalf("rotate-key-on-demand: %v\n%s", r.Err, r.Stderr)
			}
			roundTrip()

			// Aliases name keys in every cryptographic call.
			alias := "alias/e2e-" + tag
			awsJSON(t, c, cli, []string{"kms", "create-alias", "--alias-name", alias, "--target-key-id", keyID})
			awsFails(t, c, cli, "AlreadyExistsException", []string{"kms", "create-alias", "--alias-name", alias, "--target-key-id", keyID})
			viaAlias := awsJSON(t, c, cli, []string{"kms", "encrypt", "--key-id", alias, "--plaintext", "fileb://" + plainFile})
			viaAliasFile := writeFile(t, filepath.Join(dir, "alias.bin"), blobField(t, viaAlias, "CiphertextBlob"))
			dec := awsJSON(t, c, cli, []string{"kms", "decrypt", "--ciphertext-blob", "fileb://" + viaAliasFile, "--key-id", alias})
			if !bytes.Equal(blobField(t, dec, "Plaintext"), plain) {
				t.Fatal("decrypt of the alias's ciphertext")
			}
			aliasARN := strings.Replace(keyARN, ":key/"+keyID, ":"+alias, 1)
			if got := str(awsJSON(t, c, cli, []string{"kms", "describe-key", "--key-id", aliasARN}), "KeyMetadata", "KeyId"); got != keyID {
				t.Fatalf("describe-key by alias ARN: %s", got)
			}
			aliases := awsJSON(t, c, cli, []string{"kms", "list-aliases", "--key-id", keyID})
			if list, _ := aliases["Aliases"].([]any); len(list) != 1 || list[0].(map[string]any)["AliasName"] != alias {
				t.Fatalf("list-aliases: %v", aliases)
			}

			// A user needs kms:Decrypt from IAM (the default key policy
			// delegates to IAM); a Deny in the key policy overrides IAM.
			user := "kms-" + tag
			u := awsJSON(t, c, cli, []string{"iam", "create-user", "--user-name", user})
			userARN := str(u, "User", "Arn")
			k := awsJSON(t, c, cli, []string{"iam", "create-access-key", "--user-name", user})
			userCreds := creds(str(k, "AccessKey", "AccessKeyId"), str(k, "AccessKey", "SecretAccessKey"), "")
			awsFails(t, c, cli, "AccessDeniedException", decrypt, userCreds...)
			roundTrip() // the admin
			allow := fmt.Sprintf(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:Decrypt","Resource":%q}]}`, keyARN)
			awsJSON(t, c, cli, []string{"iam", "put-user-policy", "--user-name", user, "--policy-name", "decrypt", "--policy-document", allow})
			roundTrip(userCreds...)
			awsFails(t, c, cli, "AccessDeniedException", []string{"kms", "encrypt", "--key-id", keyID, "--plaintext", "fileb://" + plainFile}, userCreds...)
			account := strings.Split(keyARN, ":")[4]
			keyPolicy := fmt.Sprintf(`{"Version":"2012-10-17","Statement":[
				{"Sid":"Enable IAM User Permissions","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::%s:root"},"Action":"kms:*","Resource":"*"},
				{"Sid":"Not this user","Effect":"Deny","Principal":{"AWS":%q},"Action":"kms:Decrypt","Resource":"*"}]}`, account, userARN)
			awsJSON(t, c, cli, []string{"kms", "put-key-policy", "--key-id", keyID, "--policy-name", "default", "--policy", keyPolicy})
			got := awsJSON(t, c, cli, []string{"kms", "get-key-policy", "--key-id", keyID, "--policy-name", "default"})
			if !strings.Contains(str(got, "Policy"), "Not this user") {
				t.Fatalf("get-key-policy: %v", got)
			}
			awsFails(t, c, cli, "AccessDeniedException", decrypt, userCreds...)
			roundTrip()

			// Scheduled for deletion: unusable, and back (disabled) on cancel.
			sched := awsJSON(t, c, cli, []string{"kms", "schedule-key-deletion", "--key-id", keyID, "--pending-window-in-days", "7"})
			if str(sched, "KeyState") != "PendingDeletion" || sched["PendingWindowInDays"] != float64(7) {
				t.Fatalf("schedule-key-deletion: %v", sched)
			}
			awsFails(t, c, cli, "KMSInvalidStateException", []string{"kms", "encrypt", "--key-id", alias, "--plaintext", "fileb://" + plainFile})
			awsFails(t, c, cli, "KMSInvalidStateException", decrypt)
			awsFails(t, c, cli, "ValidationException", []string{"kms", "schedule-key-deletion", "--key-id", keyID, "--pending-window-in-days", "6"})
			if st := str(awsJSON(t, c, cli, []string{"kms", "describe-key", "--key-id", keyID}), "KeyMetadata", "KeyState"); st != "PendingDeletion" {
				t.Fatalf("state while pending deletion: %s", st)
			}
			awsJSON(t, c, cli, []string{"kms", "cancel-key-deletion", "--key-id", keyID})
			if st := str(awsJSON(t, c, cli, []string{"kms", "describe-key", "--key-id", keyID}), "KeyMetadata", "KeyState"); st != "Disabled" {
				t.Fatalf("state after cancel-key-deletion: %s", st)
			}
			awsFails(t, c, cli, "NotFoundException", []string{"kms", "describe-key", "--key-id", "alias/does-not-exist"})
		})
	}
}

// boto3 makes data keys (GenerateDataKey and friends) and gets AWS's
// validation errors for bad sizes.
func TestKMSDataKeysWithBoto3(t *testing.T) {
	py := harness.Tool(t, "python3")
	c := harness.Start(t, harness.Options{})
	script := `
import os, boto3, botocore.config, botocore.exceptions as e
cfg = botocore.config.Config(parameter_validation=False, retries={"max_attempts": 1})
kms = boto3.client("kms", endpoint_url=os.environ["CONVOY_ENDPOINT"], config=cfg)
def code(f):
    try:
        f()
        return "OK"
    except e.ClientError as err:
        return err.response["Error"]["Code"]
key = kms.create_key(Description="boto3")["KeyMetadata"]
other = kms.create_key()["KeyMetadata"]["KeyId"]
kms.create_alias(AliasName="alias/boto3", TargetKeyId=key["KeyId"])
ctx = {"bucket": "data", "object": "train.csv"}
dk = kms.generate_data_key(KeyId="alias/boto3", KeySpec="AES_256", EncryptionContext=ctx)
print("generate", len(dk["Plaintext"]), dk["KeyId"] == key["Arn"])
pt = kms.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext=ctx)["Plaintext"]
print("roundtrip", pt == dk["Plaintext"])
wo = kms.generate_data_key_without_plaintext(KeyId=key["KeyId"], NumberOfBytes=64, EncryptionContext=ctx)
print("without", "Plaintext" in wo, len(kms.decrypt(CiphertextBlob=wo["CiphertextBlob"], EncryptionContext=ctx)["Plaintext"]))
re = kms.re_encrypt(CiphertextBlob=dk["CiphertextBlob"], SourceEncryptionContext=ctx, DestinationKeyId=other)
print("reencrypt", re["KeyId"].endswith(other), kms.decrypt(CiphertextBlob=re["CiphertextBlob"], KeyId=other)["Plaintext"] == dk["Plaintext"])
kms.rotate_key_on_demand(KeyId=key["KeyId"])
print("rotated", kms.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext=ctx)["Plaintext"] == dk["Plaintext"],
      len(kms.list_key_rotations(KeyId=key["KeyId"])["Rotations"]))
print("random", len(kms.generate_random(NumberOfBytes=100)["Plaintext"]))
keys = [k["KeyId"] for p in kms.get_paginator("list_keys").paginate(PaginationConfig={"PageSize": 1}) for k in p["Keys"]]
print("listed", sorted(keys) == sorted([key["KeyId"], other]))
print("errors",
      code(lambda: kms.encrypt(KeyId=key["KeyId"], Plaintext=b"x" * 4097)),
      code(lambda: kms.generate_data_key(KeyId=key["KeyId"], NumberOfBytes=1025)),
      code(lambda: kms.generate_data_key(KeyId=key["KeyId"])),
      code(lambda: kms.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext={"bucket": "data"})),
      code(lambda: kms.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext=ctx, KeyId=other)),
      code(lambda: kms.decrypt(CiphertextBlob=b"\x00" * 100)),
      code(lambda: kms.describe_key(KeyId="arn:aws:kms:us-east-1:000000000000:nothing")))
`
	cmd := exec.Command(py, "-c", script)
	cmd.Env = c.ClientEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("boto3: %v\n%s", err, out)
	}
	want := `generate 32 True
roundtrip True
without False 64
reencrypt True True
rotated True 1
random 100
listed True
errors ValidationException ValidationException ValidationException InvalidCiphertextException IncorrectKeyException InvalidCiphertextException InvalidArnException`
	if got := strings.TrimSpace(string(out)); got != want {
		t.Fatalf("boto3 output:\n%s\nwant:\n%s", got, want)
	}
}

// Keys, their rotated versions and their ciphertexts survive a restart.
func TestKMSKeysSurviveRestart(t *testing.T) {
	c := harness.Start(t, harness.Options{})
	cli := harness.Tool(t, "aws")
	dir := t.TempDir()
	keyID := str(awsJSON(t, c, cli, []string{"kms", "create-key"}), "KeyMetadata", "KeyId")
	plainFile := writeFile(t, filepath.Join(dir, "plain.bin"), []byte("kept across restarts"))
	enc := awsJSON(t, c, cli, []string{"kms", "encrypt", "--key-id", keyID, "--plaintext", "fileb://" + plainFile})
	blobFile := writeFile(t, filepath.Join(dir, "blob.bin"), blobField(t, enc, "CiphertextBlob"))
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	// Key material is sealed under the master key: never in the database
	// in the clear (a grep for the plaintext finds nothing either).
	db, err := os.ReadFile(filepath.Join(c.DataDir, "convoy.db"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(db, []byte("kept across restarts")) {
		t.Fatal("plaintext in the database")
	}
	c = harness.Start(t, harness.Options{DataDir: c.DataDir})
	dec := awsJSON(t, c, cli, []string{"kms", "decrypt", "--ciphertext-blob", "fileb://" + blobFile})
	if string(blobField(t, dec, "Plaintext")) != "kept across restarts" {
		t.Fatalf("decrypt after restart: %v", dec)
	}
}
