package kms

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"convoy/internal/iam"
)

func TestEncryptDecryptRoundTrip(t *testing.T) {
	e := newEnv(t)
	id := e.createKey(map[string]any{"Description": "test key", "Tags": []map[string]string{{"TagKey": "team", "TagValue": "ml"}}})
	arn := e.kms.keyARN(id)
	for _, ref := range []string{id, arn} {
		for _, plain := range [][]byte{{0}, []byte("hello"), bytes.Repeat([]byte{0xab}, maxPlaintext)} {
			blob := e.encrypt(e.admin, ref, plain, nil)
			out := e.must(e.admin, "Decrypt", map[string]any{"CiphertextBlob": blob})
			if got := b64(t, out["Plaintext"]); !bytes.Equal(got, plain) {
				t.Fatalf("round trip of %d bytes via %s: got %d bytes", len(plain), ref, len(got))
			}
			if out["KeyId"] != arn || out["EncryptionAlgorithm"] != "SYMMETRIC_DEFAULT" {
				t.Fatalf("decrypt output: %v", out)
			}
		}
	}
	md := e.must(e.admin, "DescribeKey", map[string]any{"KeyId": id})["KeyMetadata"].(map[string]any)
	for field, want := range map[string]any{
		"KeyId": id, "Arn": arn, "KeyState": "Enabled", "Enabled": true, "KeyManager": "CUSTOMER",
		"KeySpec": "SYMMETRIC_DEFAULT", "KeyUsage": "ENCRYPT_DECRYPT", "Origin": "AWS_KMS",
		"Description": "test key", "AWSAccountId": e.iam.AccountID(), "MultiRegion": false,
	} {
		if md[field] != want {
			t.Errorf("KeyMetadata.%s = %v, want %v", field, md[field], want)
		}
	}
	if _, ok := md["CreationDate"].(float64); !ok {
		t.Errorf("CreationDate is not epoch seconds: %v", md["CreationDate"])
	}
	tags := e.must(e.admin, "ListResourceTags", map[string]any{"KeyId": id})["Tags"].([]any)
	if len(tags) != 1 || tags[0].(map[string]any)["TagKey"] != "team" {
		t.Errorf("tags: %v", tags)
	}
}

func TestDecryptErrors(t *testing.T) {
	e := newEnv(t)
	id := e.createKey(nil)
	other := e.createKey(nil)
	encCtx := map[string]string{"purpose": "unit-test", "tenant": "a"}
	blob := e.encrypt(e.admin, id, []byte("secret"), encCtx)

	tampered := bytes.Clone(blob)
	tampered[len(tampered)-1] ^= 1
	unknownKey := bytes.Clone(blob)
	copy(unknownKey[4:20], make([]byte, 16))
	otherVersion := bytes.Clone(blob)
	binary.BigEndian.PutUint32(otherVersion[20:24], 2)

	var messages []string
	for _, tc := range []struct {
		name string
		in   map[string]any
		code string
	}{
		{"right context", map[string]any{"CiphertextBlob": blob, "EncryptionContext": encCtx}, ""},
		{"right context and key", map[string]any{"CiphertextBlob": blob, "EncryptionContext": encCtx, "KeyId": id}, ""},
		{"no context", map[string]any{"CiphertextBlob": blob}, "InvalidCiphertextException"},
		{"wrong value", map[string]any{"CiphertextBlob": blob, "EncryptionContext": map[string]string{"purpose": "unit-test", "tenant": "b"}}, "InvalidCiphertextException"},
		{"tampered tag", map[string]any{"CiphertextBlob": tampered, "EncryptionContext": encCtx}, "InvalidCiphertextException"},
		{"unknown key", map[string]any{"CiphertextBlob": unknownKey, "EncryptionContext": encCtx}, "InvalidCiphertextException"},
		{"no such version", map[string]any{"CiphertextBlob": otherVersion, "EncryptionContext": encCtx}, "InvalidCiphertextException"},
		{"garbage", map[string]any{"CiphertextBlob": []byte("not a blob at all, but long enough to be one maybe")}, "InvalidCiphertextException"},
		{"other key named", map[string]any{"CiphertextBlob": blob, "EncryptionContext": encCtx, "KeyId": other}, "IncorrectKeyException"},
		{"no blob", map[string]any{}, "ValidationException"},
		{"oversized blob", map[string]any{"CiphertextBlob": make([]byte, maxBlobLen+1)}, "ValidationException"},
		{"RSA algorithm", map[string]any{"CiphertextBlob": blob, "EncryptionAlgorithm": "RSAES_OAEP_SHA_256"}, "InvalidKeyUsageException"},
		{"dry run", map[string]any{"CiphertextBlob": blob, "EncryptionContext": encCtx, "DryRun": true}, "DryRunOperationException"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.call(e.admin, "Decrypt", tc.in)
			if code(err) != tc.code {
				t.Fatalf("got %v, want %q", err, tc.code)
			}
			if tc.code == "InvalidCiphertextException" {
				messages = append(messages, err.Message)
			}
		})
	}
	// Which check failed is never told.
	for _, m := range messages {
		if m != messages[0] {
			t.Fatalf("InvalidCiphertextException messages differ: %q", messages)
		}
	}
}

func TestValidation(t *testing.T) {
	e := newEnv(t)
	id := e.createKey(nil)
	for _, tc := range []struct {
		op, body, code, msg string
	}{
		{"Encrypt", fmt.Sprintf(`{"KeyId":%q,"Plaintext":"%s"}`, id, strings.Repeat("AAAA", 1366)), "ValidationException", "less than or equal to 4096"},
		{"Encrypt", fmt.Sprintf(`{"KeyId":%q,"Plaintext":""}`, id), "ValidationException", "greater than or equal to 1"},
		{"Encrypt", fmt.Sprintf(`{"KeyId":%q}`, id), "ValidationException", "'plaintext'"},
		{"Encrypt", `{"Plaintext":"AA=="}`, "ValidationException", "'keyId'"},
		{"Encrypt", fmt.Sprintf(`{"KeyId":%q,"Plaintext":"not base64!"}`, id), "SerializationException", ""},
		{"Encrypt", `not json`, "SerializationException", ""},
		{"Encrypt", `[1,2]`, "SerializationException", ""},
		{"Encrypt", `{"KeyId":5}`, "SerializationException", "KeyId"},
		{"Encrypt", fmt.Sprintf(`{"KeyId":%q,"Plaintext":"AA==","EncryptionAlgorithm":"ROT13"}`, id), "ValidationException", "enum"},
		{"Encrypt", `{"KeyId":"nope","Plaintext":"AA=="}`, "NotFoundException", "Invalid keyId"},
		{"Encrypt", `{"KeyId":"alias/none","Plaintext":"AA=="}`, "NotFoundException", "alias/none"},
		{"Encrypt", `{"KeyId":"arn:aws:kms:us-east-1:123:thing/x","Plaintext":"AA=="}`, "InvalidArnException", ""},
		{"Encrypt", `{"KeyId":"arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab","Plaintext":"AA=="}`, "NotFoundException", ""},
		{"Encrypt", `{"KeyId":"1234abcd-12ab-34cd-56ef-1234567890ab","Plaintext":"AA=="}`, "NotFoundException", "does not exist"},
		{"GenerateDataKey", fmt.Sprintf(`{"KeyId":%q,"NumberOfBytes":0}`, id), "ValidationException", "greater than or equal to 1"},
		{"GenerateDataKey", fmt.Sprintf(`{"KeyId":%q,"NumberOfBytes":1025}`, id), "ValidationException", "less than or equal to 1024"},
		{"GenerateDataKey", fmt.Sprintf(`{"KeyId":%q,"NumberOfBytes":99999999999999999999}`, id), "SerializationException", ""},
		{"GenerateDataKey", fmt.Sprintf(`{"KeyId":%q}`, id), "ValidationException", "KeySpec or NumberOfBytes"},
		{"GenerateDataKey", fmt.Sprintf(`{"KeyId":%q,"KeySpec":"AES_256","NumberOfBytes":32}`, id), "ValidationException", "not both"},
		{"GenerateDataKey", fmt.Sprintf(`{"KeyId":%q,"KeySpec":"AES_512"}`, id), "ValidationException", "enum"},
		{"GenerateRandom", `{}`, "ValidationException", "numberOfBytes"},
		{"GenerateRandom", `{"NumberOfBytes":2000}`, "ValidationException", "1024"},
		{"ScheduleKeyDeletion", fmt.Sprintf(`{"KeyId":%q,"PendingWindowInDays":6}`, id), "ValidationException", "greater than or equal to 7"},
		{"ScheduleKeyDeletion", fmt.Sprintf(`{"KeyId":%q,"PendingWindowInDays":31}`, id), "ValidationException", "less than or equal to 30"},
		{"EnableKeyRotation", fmt.Sprintf(`{"KeyId":%q,"RotationPeriodInDays":30}`, id), "ValidationException", "90"},
		{"CreateKey", `{"KeySpec":"RSA_2048"}`, "UnsupportedOperationException", "SYMMETRIC_DEFAULT"},
		{"CreateKey", `{"KeySpec":"AES"}`, "ValidationException", "enum"},
		{"CreateKey", `{"KeyUsage":"SIGN_VERIFY"}`, "ValidationException", "not compatible"},
		{"CreateKey", `{"Policy":"{}"}`, "MalformedPolicyDocumentException", ""},
		{"CreateKey", `{"Policy":"{\"Version\":\"2012-10-17\",\"Statement\":[{\"Effect\":\"Allow\",\"Action\":\"kms:*\",\"Resource\":\"*\"}]}"}`, "MalformedPolicyDocumentException", "Principal"},
		{"CreateKey", `{"Tags":[{"TagKey":"aws:x","TagValue":"y"}]}`, "TagException", ""},
		{"CreateAlias", fmt.Sprintf(`{"AliasName":"nope","TargetKeyId":%q}`, id), "InvalidAliasNameException", ""},
		{"CreateAlias", fmt.Sprintf(`{"AliasName":"alias/aws/s3","TargetKeyId":%q}`, id), "InvalidAliasNameException", "reserved"},
		{"CreateAlias", fmt.Sprintf(`{"AliasName":"alias/a b","TargetKeyId":%q}`, id), "ValidationException", "pattern"},
		{"CreateAlias", `{"AliasName":"alias/x","TargetKeyId":"alias/y"}`, "ValidationException", "not an alias"},
		{"GetKeyPolicy", fmt.Sprintf(`{"KeyId":%q,"PolicyName":"other"}`, id), "NotFoundException", "default"},
		{"ListKeys", `{"Limit":0}`, "ValidationException", ""},
		{"ListKeys", `{"Marker":"garbage"}`, "InvalidMarkerException", ""},
		{"Frobnicate", `{}`, "UnknownOperationException", ""},
	} {
		t.Run(tc.op+" "+tc.code, func(t *testing.T) {
			_, err := e.call(e.admin, tc.op, tc.body)
			if err == nil || err.Code != tc.code || !strings.Contains(err.Message, tc.msg) {
				t.Fatalf("%s %s: got %v, want %s containing %q", tc.op, tc.body[:min(len(tc.body), 80)], err, tc.code, tc.msg)
			}
		})
	}
	// An empty body is an empty input.
	if _, err := e.call(e.admin, "ListKeys", ""); err != nil {
		t.Fatalf("ListKeys with an empty body: %v", err)
	}
}

func TestGenerateDataKey(t *testing.T) {
	e := newEnv(t)
	id := e.createKey(nil)
	encCtx := map[string]string{"job": "train-1"}
	for _, tc := range []struct {
		in   map[string]any
		size int
	}{
		{map[string]any{"KeySpec": "AES_256"}, 32},
		{map[string]any{"KeySpec": "AES_128"}, 16},
		{map[string]any{"NumberOfBytes": 1}, 1},
		{map[string]any{"NumberOfBytes": 1024}, 1024},
	} {
		tc.in["KeyId"], tc.in["EncryptionContext"] = id, encCtx
		out := e.must(e.admin, "GenerateDataKey", tc.in)
		plain, blob := b64(t, out["Plaintext"]), b64(t, out["CiphertextBlob"])
		if len(plain) != tc.size {
			t.Fatalf("%v: %d bytes", tc.in, len(plain))
		}
		dec := e.must(e.admin, "Decrypt", map[string]any{"CiphertextBlob": blob, "EncryptionContext": encCtx})
		if !bytes.Equal(b64(t, dec["Plaintext"]), plain) {
			t.Fatal("data key does not decrypt to itself")
		}
	}
	out := e.must(e.admin, "GenerateDataKeyWithoutPlaintext", map[string]any{"KeyId": id, "KeySpec": "AES_256"})
	if _, ok := out["Plaintext"]; ok {
		t.Fatal("GenerateDataKeyWithoutPlaintext returned the plaintext")
	}
	dec := e.must(e.admin, "Decrypt", map[string]any{"CiphertextBlob": b64(t, out["CiphertextBlob"])})
	if len(b64(t, dec["Plaintext"])) != 32 {
		t.Fatal("data key without plaintext does not decrypt")
	}
	r := e.must(e.admin, "GenerateRandom", map[string]any{"NumberOfBytes": 64})
	if len(b64(t, r["Plaintext"])) != 64 {
		t.Fatal("GenerateRandom length")
	}
}

func TestReEncrypt(t *testing.T) {
	e := newEnv(t)
	src, dst := e.createKey(nil), e.createKey(nil)
	blob := e.encrypt(e.admin, src, []byte("move me"), map[string]string{"a": "1"})
	out := e.must(e.admin, "ReEncrypt", map[string]any{
		"CiphertextBlob": blob, "SourceEncryptionContext": map[string]string{"a": "1"},
		"DestinationKeyId": dst, "DestinationEncryptionContext": map[string]string{"b": "2"},
	})
	if out["SourceKeyId"] != e.kms.keyARN(src) || out["KeyId"] != e.kms.keyARN(dst) {
		t.Fatalf("ReEncrypt output: %v", out)
	}
	moved := b64(t, out["CiphertextBlob"])
	dec := e.must(e.admin, "Decrypt", map[string]any{"CiphertextBlob": moved, "EncryptionContext": map[string]string{"b": "2"}, "KeyId": dst})
	if string(b64(t, dec["Plaintext"])) != "move me" {
		t.Fatal("re-encrypted blob does not decrypt")
	}
	e.fails(e.admin, "InvalidCiphertextException", "ReEncrypt", map[string]any{"CiphertextBlob": blob, "DestinationKeyId": dst})
}

func TestRotation(t *testing.T) {
	e := newEnv(t)
	id := e.createKey(nil)
	v1 := e.encrypt(e.admin, id, []byte("old"), nil)
	e.must(e.admin, "RotateKeyOnDemand", map[string]any{"KeyId": id})
	v2 := e.encrypt(e.admin, id, []byte("new"), nil)
	if got := binary.BigEndian.Uint32(v1[20:24]); got != 1 {
		t.Fatalf("first blob has version %d", got)
	}
	if got := binary.BigEndian.Uint32(v2[20:24]); got != 2 {
		t.Fatalf("blob after rotation has version %d", got)
	}
	for want, blob := range map[string][]byte{"old": v1, "new": v2} {
		out := e.must(e.admin, "Decrypt", map[string]any{"CiphertextBlob": blob})
		if string(b64(t, out["Plaintext"])) != want {
			t.Fatalf("decrypt %s after rotation", want)
		}
	}
	rot := e.must(e.admin, "ListKeyRotations", map[string]any{"KeyId": id})["Rotations"].([]any)
	if len(rot) != 1 || rot[0].(map[string]any)["RotationType"] != "ON_DEMAND" || rot[0].(map[string]any)["KeyMaterialState"] != "CURRENT" {
		t.Fatalf("rotations: %v", rot)
	}
	all := e.must(e.admin, "ListKeyRotations", map[string]any{"KeyId": id, "IncludeKeyMaterial": "ALL_KEY_MATERIAL", "Limit": 1})
	if all["Truncated"] != true || len(all["Rotations"].([]any)) != 1 {
		t.Fatalf("paged rotations: %v", all)
	}
	next := e.must(e.admin, "ListKeyRotations", map[string]any{"KeyId": id, "IncludeKeyMaterial": "ALL_KEY_MATERIAL", "Marker": all["NextMarker"]})
	if next["Truncated"] != false || len(next["Rotations"].([]any)) != 1 {
		t.Fatalf("second page of rotations: %v", next)
	}

	// Automatic rotation happens when it falls due.
	st := e.must(e.admin, "GetKeyRotationStatus", map[string]any{"KeyId": id})
	if st["KeyRotationEnabled"] != false {
		t.Fatalf("rotation status: %v", st)
	}
	e.must(e.admin, "EnableKeyRotation", map[string]any{"KeyId": id, "RotationPeriodInDays": 90})
	st = e.must(e.admin, "GetKeyRotationStatus", map[string]any{"KeyId": id})
	if st["KeyRotationEnabled"] != true || st["RotationPeriodInDays"] != float64(90) || st["NextRotationDate"] == nil {
		t.Fatalf("rotation status: %v", st)
	}
	if err := e.kms.rotateDue(e.ctx); err != nil {
		t.Fatal(err)
	}
	if k, _ := e.kms.key(e.ctx, id); k.CurrentVersion != 2 {
		t.Fatalf("rotated before it was due: version %d", k.CurrentVersion)
	}
	e.clock = e.clock.Add(91 * 24 * time.Hour)
	if err := e.kms.rotateDue(e.ctx); err != nil {
		t.Fatal(err)
	}
	if k, _ := e.kms.key(e.ctx, id); k.CurrentVersion != 3 || !k.NextRotation.After(e.clock) {
		t.Fatalf("after the period: version %d, next %v", k.CurrentVersion, k.NextRotation)
	}
	for _, blob := range [][]byte{v1, v2} {
		e.must(e.admin, "Decrypt", map[string]any{"CiphertextBlob": blob})
	}
	e.must(e.admin, "DisableKeyRotation", map[string]any{"KeyId": id})

	// On-demand rotations are limited, as on AWS.
	for range maxOnDemandRotations - 1 {
		e.must(e.admin, "RotateKeyOnDemand", map[string]any{"KeyId": id})
	}
	e.fails(e.admin, "LimitExceededException", "RotateKeyOnDemand", map[string]any{"KeyId": id})
}

func TestKeyStates(t *testing.T) {
	e := newEnv(t)
	id := e.createKey(nil)
	blob := e.encrypt(e.admin, id, []byte("x"), nil)
	key := map[string]any{"KeyId": id}
	enc := map[string]any{"KeyId": id, "Plaintext": []byte("x")}
	dec := map[string]any{"CiphertextBlob": blob}
	gdk := map[string]any{"KeyId": id, "KeySpec": "AES_256"}
	type step struct{ op, code string }
	check := func(state string, in map[string]map[string]any, steps ...step) {
		t.Helper()
		for _, s := range steps {
			body := key
			if b, ok := in[s.op]; ok {
				body = b
			}
			if _, err := e.call(e.admin, s.op, body); code(err) != s.code {
				t.Errorf("%s: %s: got %v, want %q", state, s.op, err, s.code)
			}
		}
	}
	bodies := map[string]map[string]any{"Encrypt": enc, "Decrypt": dec, "GenerateDataKey": gdk}

	e.must(e.admin, "DisableKey", key)
	check("Disabled", bodies,
		step{"Encrypt", "DisabledException"}, step{"Decrypt", "DisabledException"}, step{"GenerateDataKey", "DisabledException"},
		step{"RotateKeyOnDemand", "DisabledException"}, step{"EnableKeyRotation", "DisabledException"},
		step{"DescribeKey", ""}, step{"GetKeyPolicy", ""}, step{"CancelKeyDeletion", "KMSInvalidStateException"})
	e.must(e.admin, "EnableKey", key)
	check("re-enabled", bodies, step{"Encrypt", ""}, step{"Decrypt", ""})

	out := e.must(e.admin, "ScheduleKeyDeletion", map[string]any{"KeyId": id, "PendingWindowInDays": 7})
	if out["KeyState"] != "PendingDeletion" || out["PendingWindowInDays"] != float64(7) || out["KeyId"] != e.kms.keyARN(id) {
		t.Fatalf("ScheduleKeyDeletion: %v", out)
	}
	md := e.must(e.admin, "DescribeKey", key)["KeyMetadata"].(map[string]any)
	if md["KeyState"] != "PendingDeletion" || md["Enabled"] != false || md["DeletionDate"] == nil || md["PendingDeletionWindowInDays"] != float64(7) {
		t.Fatalf("DescribeKey while pending deletion: %v", md)
	}
	check("PendingDeletion", bodies,
		step{"Encrypt", "KMSInvalidStateException"}, step{"Decrypt", "KMSInvalidStateException"},
		step{"GenerateDataKey", "KMSInvalidStateException"}, step{"EnableKey", "KMSInvalidStateException"},
		step{"DisableKey", "KMSInvalidStateException"}, step{"ScheduleKeyDeletion", "KMSInvalidStateException"},
		step{"RotateKeyOnDemand", "KMSInvalidStateException"})

	// Cancelling brings the key back disabled, as AWS.
	e.must(e.admin, "CancelKeyDeletion", key)
	check("cancelled", bodies, step{"Encrypt", "DisabledException"})
	e.must(e.admin, "EnableKey", key)
	e.must(e.admin, "CreateAlias", map[string]any{"AliasName": "alias/doomed", "TargetKeyId": id})

	// The key is destroyed when its window ends, and not before.
	e.must(e.admin, "ScheduleKeyDeletion", map[string]any{"KeyId": id, "PendingWindowInDays": 7})
	e.clock = e.clock.Add(7*24*time.Hour - time.Minute)
	check("pending, almost due", bodies, step{"DescribeKey", ""})
	e.clock = e.clock.Add(time.Minute)
	check("deleted", bodies,
		step{"DescribeKey", "NotFoundException"}, step{"Encrypt", "NotFoundException"},
		step{"Decrypt", "NotFoundException"}, step{"CancelKeyDeletion", "NotFoundException"})
	var n int
	e.db.QueryRow(`SELECT COUNT(*) FROM kms_key_versions WHERE key_id = ?`, id).Scan(&n)
	if n != 0 {
		t.Fatalf("%d key versions left after deletion", n)
	}
	e.fails(e.admin, "NotFoundException", "DescribeKey", map[string]any{"KeyId": "alias/doomed"})
	keys := e.must(e.admin, "ListKeys", map[string]any{})["Keys"].([]any)
	if len(keys) != 0 {
		t.Fatalf("deleted key listed: %v", keys)
	}
}

// The sweeper deletes expired keys without any request touching them.
func TestSweeperPurges(t *testing.T) {
	e := newEnv(t)
	id := e.createKey(nil)
	e.must(e.admin, "ScheduleKeyDeletion", map[string]any{"KeyId": id, "PendingWindowInDays": 7})
	e.clock = e.clock.Add(8 * 24 * time.Hour)
	if err := e.kms.purgeExpired(e.ctx); err != nil {
		t.Fatal(err)
	}
	var state string
	e.db.QueryRow(`SELECT state FROM kms_keys WHERE key_id = ?`, id).Scan(&state)
	if state != stateDeleted {
		t.Fatalf("state after sweep: %q", state)
	}
}

// Open starts the sweeper, which deletes what expired while convoy was
// down, and stops it with its context.
func TestOpenSweeps(t *testing.T) {
	e := newEnv(t)
	id := e.createKey(nil)
	e.must(e.admin, "ScheduleKeyDeletion", map[string]any{"KeyId": id, "PendingWindowInDays": 7})
	if _, err := e.db.Exec(`UPDATE kms_keys SET deletion_date = ? WHERE key_id = ?`, time.Now().Add(-time.Second).UnixMilli(), id); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	if _, err := Open(ctx, e.db, e.box, e.iam, testRegion, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		var state string
		e.db.QueryRow(`SELECT state FROM kms_keys WHERE key_id = ?`, id).Scan(&state)
		if state == stateDeleted {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the sweeper did not delete the expired key (state %s)", state)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestKeyMaterialIsSealed(t *testing.T) {
	e := newEnv(t)
	id := e.createKey(nil)
	var sealed []byte
	if err := e.db.QueryRow(`SELECT material_sealed FROM kms_key_versions WHERE key_id = ? AND version = 1`, id).Scan(&sealed); err != nil {
		t.Fatal(err)
	}
	if len(sealed) != 12+materialSize+16 {
		t.Fatalf("sealed material is %d bytes", len(sealed))
	}
	material, err := e.box.Open(sealed, materialAAD(id, 1))
	if err != nil || len(material) != materialSize {
		t.Fatalf("material does not open with its key ID and version: %v", err)
	}
	if bytes.Contains(sealed, material) {
		t.Fatal("material stored in the clear")
	}
	for _, aad := range [][]byte{materialAAD(id, 2), materialAAD(newKeyID(), 1)} {
		if _, err := e.box.Open(sealed, aad); err == nil {
			t.Fatalf("material opens with AAD %q", aad)
		}
	}
	// A restarted service (new caches) decrypts what the old one encrypted.
	blob := e.encrypt(e.admin, id, []byte("persist"), nil)
	e.kms = e.open()
	out := e.must(e.admin, "Decrypt", map[string]any{"CiphertextBlob": blob})
	if string(b64(t, out["Plaintext"])) != "persist" {
		t.Fatal("decrypt after reopen")
	}
}

func TestAliases(t *testing.T) {
	e := newEnv(t)
	a, b := e.createKey(nil), e.createKey(nil)
	e.must(e.admin, "CreateAlias", map[string]any{"AliasName": "alias/app", "TargetKeyId": a})
	e.fails(e.admin, "AlreadyExistsException", "CreateAlias", map[string]any{"AliasName": "alias/app", "TargetKeyId": b})
	aliasARN := e.kms.aliasARN("alias/app")
	for _, ref := range []string{"alias/app", aliasARN, a, e.kms.keyARN(a)} {
		md := e.must(e.admin, "DescribeKey", map[string]any{"KeyId": ref})["KeyMetadata"].(map[string]any)
		if md["KeyId"] != a {
			t.Fatalf("DescribeKey %s: %v", ref, md["KeyId"])
		}
	}
	blob := e.encrypt(e.admin, "alias/app", []byte("via alias"), nil)
	e.must(e.admin, "Decrypt", map[string]any{"CiphertextBlob": blob, "KeyId": "alias/app"})

	e.must(e.admin, "UpdateAlias", map[string]any{"AliasName": "alias/app", "TargetKeyId": b})
	if md := e.must(e.admin, "DescribeKey", map[string]any{"KeyId": "alias/app"})["KeyMetadata"].(map[string]any); md["KeyId"] != b {
		t.Fatalf("alias not moved: %v", md["KeyId"])
	}
	// The old blob names its key, not the alias: it still decrypts, but
	// not when the caller insists on the alias's new key.
	e.must(e.admin, "Decrypt", map[string]any{"CiphertextBlob": blob})
	e.fails(e.admin, "IncorrectKeyException", "Decrypt", map[string]any{"CiphertextBlob": blob, "KeyId": "alias/app"})

	e.must(e.admin, "CreateAlias", map[string]any{"AliasName": "alias/other", "TargetKeyId": a})
	list := e.must(e.admin, "ListAliases", map[string]any{"Limit": 1})
	if list["Truncated"] != true || list["Aliases"].([]any)[0].(map[string]any)["AliasName"] != "alias/app" {
		t.Fatalf("ListAliases page 1: %v", list)
	}
	list = e.must(e.admin, "ListAliases", map[string]any{"Marker": list["NextMarker"]})
	entry := list["Aliases"].([]any)[0].(map[string]any)
	if list["Truncated"] != false || entry["AliasName"] != "alias/other" || entry["TargetKeyId"] != a ||
		entry["AliasArn"] != e.kms.aliasARN("alias/other") {
		t.Fatalf("ListAliases page 2: %v", list)
	}
	if got := e.must(e.admin, "ListAliases", map[string]any{"KeyId": b})["Aliases"].([]any); len(got) != 1 {
		t.Fatalf("ListAliases for key b: %v", got)
	}
	e.must(e.admin, "DeleteAlias", map[string]any{"AliasName": "alias/app"})
	e.fails(e.admin, "NotFoundException", "DeleteAlias", map[string]any{"AliasName": "alias/app"})
	e.fails(e.admin, "NotFoundException", "Encrypt", map[string]any{"KeyId": "alias/app", "Plaintext": []byte("x")})
}

// policyFor makes an identity policy allowing actions on resource.
func policyFor(effect, actions, resource string) string {
	return fmt.Sprintf(`{"Version":"2012-10-17","Statement":[{"Effect":%q,"Action":%s,"Resource":%q}]}`, effect, actions, resource)
}

func TestAuthorization(t *testing.T) {
	e := newEnv(t)
	acct := e.iam.AccountID()
	root := fmt.Sprintf(`{"Sid":"root","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::%s:root"},"Action":"kms:*","Resource":"*"}`, acct)
	keyPolicy := func(statements ...string) string {
		return `{"Version":"2012-10-17","Statement":[` + strings.Join(statements, ",") + `]}`
	}
	userARN := func(name string) string { return e.iam.UserARN(name) }

	for i, tc := range []struct {
		name      string
		keyPolicy func(user string) string // nil: the default policy
		iam       func(keyARN string) string
		encCtx    map[string]string
		allowed   bool
	}{
		{name: "default policy, no IAM policy", allowed: false},
		{name: "default policy, IAM allows the key",
			iam: func(k string) string { return policyFor("Allow", `"kms:Decrypt"`, k) }, allowed: true},
		{name: "default policy, IAM allows kms:*",
			iam: func(k string) string { return policyFor("Allow", `"kms:*"`, "*") }, allowed: true},
		{name: "default policy, IAM allows another key",
			iam: func(k string) string { return policyFor("Allow", `"kms:Decrypt"`, k[:len(k)-4]+"0000") }, allowed: false},
		{name: "default policy, IAM allows another action",
			iam: func(k string) string { return policyFor("Allow", `"kms:Encrypt"`, k) }, allowed: false},
		{name: "key policy names the user, no IAM policy",
			keyPolicy: func(u string) string {
				return keyPolicy(root, fmt.Sprintf(`{"Effect":"Allow","Principal":{"AWS":%q},"Action":"kms:Decrypt","Resource":"*"}`, userARN(u)))
			}, allowed: true},
		{name: "key policy names the user, IAM denies",
			keyPolicy: func(u string) string {
				return keyPolicy(root, fmt.Sprintf(`{"Effect":"Allow","Principal":{"AWS":%q},"Action":"kms:Decrypt","Resource":"*"}`, userARN(u)))
			},
			iam: func(k string) string { return policyFor("Deny", `"kms:*"`, "*") }, allowed: false},
		{name: "key policy denies the user, IAM allows",
			keyPolicy: func(u string) string {
				return keyPolicy(root, fmt.Sprintf(`{"Effect":"Deny","Principal":{"AWS":%q},"Action":"kms:Decrypt","Resource":"*"}`, userARN(u)))
			},
			iam: func(k string) string { return policyFor("Allow", `"kms:*"`, "*") }, allowed: false},
		{name: "key policy without the account, IAM allows",
			keyPolicy: func(u string) string {
				return keyPolicy(fmt.Sprintf(`{"Effect":"Allow","Principal":{"AWS":%q},"Action":"kms:*","Resource":"*"}`, e.admin.ARN))
			},
			iam: func(k string) string { return policyFor("Allow", `"kms:*"`, "*") }, allowed: false},
		{name: "key policy allows everyone in the account by condition",
			keyPolicy: func(u string) string {
				return keyPolicy(root, fmt.Sprintf(`{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"kms:Decrypt","Resource":"*","Condition":{"StringEquals":{"kms:CallerAccount":%q}}}`, acct))
			}, allowed: true},
		{name: "key policy requires an encryption context, given",
			keyPolicy: func(u string) string {
				return keyPolicy(root, fmt.Sprintf(`{"Effect":"Allow","Principal":{"AWS":%q},"Action":"kms:Decrypt","Resource":"*","Condition":{"StringEquals":{"kms:EncryptionContext:purpose":"test"}}}`, userARN(u)))
			}, encCtx: map[string]string{"purpose": "test"}, allowed: true},
		{name: "key policy requires an encryption context, other value",
			keyPolicy: func(u string) string {
				return keyPolicy(root, fmt.Sprintf(`{"Effect":"Allow","Principal":{"AWS":%q},"Action":"kms:Decrypt","Resource":"*","Condition":{"StringEquals":{"kms:EncryptionContext:purpose":"test"}}}`, userARN(u)))
			}, encCtx: map[string]string{"purpose": "prod"}, allowed: false},
		{name: "IAM allows only with context keys",
			iam: func(k string) string {
				return `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:Decrypt","Resource":"*","Condition":{"ForAllValues:StringEquals":{"kms:EncryptionContextKeys":["purpose"]},"Null":{"kms:EncryptionContextKeys":"false"}}}]}`
			}, encCtx: map[string]string{"purpose": "x"}, allowed: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			user := fmt.Sprintf("u%d", i)
			in := map[string]any{}
			if tc.keyPolicy != nil {
				e.user(user) // the key policy names the user: it must exist
				in["Policy"] = tc.keyPolicy(user)
			}
			id := e.createKey(in)
			keyARN := e.kms.keyARN(id)
			var p *iam.Principal
			if tc.keyPolicy != nil {
				if tc.iam != nil {
					if err := e.iam.PutInlinePolicy(e.ctx, iam.KindUser, user, "p", tc.iam(keyARN)); err != nil {
						t.Fatal(err)
					}
				}
				p, _ = e.iam.UserPrincipal(e.ctx, user, "AKIATEST")
			} else if tc.iam != nil {
				p = e.user(user, tc.iam(keyARN))
			} else {
				p = e.user(user)
			}
			blob := e.encrypt(e.admin, id, []byte("data"), tc.encCtx)
			_, err := e.call(p, "Decrypt", map[string]any{"CiphertextBlob": blob, "EncryptionContext": tc.encCtx})
			if tc.allowed && err != nil {
				t.Fatalf("denied: %v", err)
			}
			if !tc.allowed && code(err) != "AccessDeniedException" {
				t.Fatalf("want AccessDeniedException, got %v", err)
			}
			if !tc.allowed && !strings.Contains(err.Message, "kms:Decrypt") {
				t.Fatalf("denial does not say what was denied: %s", err.Message)
			}
		})
	}
}

func TestAuthorizationRolesAndAccountActions(t *testing.T) {
	e := newEnv(t)
	trust := fmt.Sprintf(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::%s:root"},"Action":"sts:AssumeRole"}]}`, e.iam.AccountID())
	role, err := e.iam.CreateRole(e.ctx, iam.Role{Name: "trainer", Path: "/", Trust: trust})
	if err != nil {
		t.Fatal(err)
	}
	session := &iam.Principal{
		ARN: fmt.Sprintf("arn:aws:sts::%s:assumed-role/trainer/s1", e.iam.AccountID()), AccountID: e.iam.AccountID(),
		UserID: role.ID + ":s1", Kind: iam.KindAssumedRole, Name: "trainer", SessionName: "s1", RoleARN: role.ARN, Temporary: true,
	}
	direct := fmt.Sprintf(`{"Version":"2012-10-17","Statement":[
		{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::%s:root"},"Action":"kms:*","Resource":"*"},
		{"Effect":"Allow","Principal":{"AWS":%q},"Action":["kms:Encrypt","kms:Decrypt"],"Resource":"*"}]}`, e.iam.AccountID(), role.ARN)
	id := e.createKey(map[string]any{"Policy": direct})
	other := e.createKey(nil)
	e.must(session, "Encrypt", map[string]any{"KeyId": id, "Plaintext": []byte("x")})
	e.fails(session, "AccessDeniedException", "Encrypt", map[string]any{"KeyId": other, "Plaintext": []byte("x")})
	e.fails(session, "AccessDeniedException", "DescribeKey", map[string]any{"KeyId": id})
	e.fails(session, "AccessDeniedException", "CreateKey", map[string]any{})
	e.fails(session, "AccessDeniedException", "ListKeys", map[string]any{})
	e.fails(session, "AccessDeniedException", "GenerateRandom", map[string]any{"NumberOfBytes": 8})

	// Alias changes need permission on the alias and on the key.
	aliasOnly := e.user("aliaser", policyFor("Allow", `"kms:CreateAlias"`, e.kms.aliasARN("alias/mine")))
	e.fails(aliasOnly, "AccessDeniedException", "CreateAlias", map[string]any{"AliasName": "alias/mine", "TargetKeyId": other})
	both := e.user("aliaser2", fmt.Sprintf(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:CreateAlias","Resource":[%q,%q]}]}`,
		e.kms.aliasARN("alias/mine"), e.kms.keyARN(other)))
	e.must(both, "CreateAlias", map[string]any{"AliasName": "alias/mine", "TargetKeyId": other})
	e.fails(both, "AccessDeniedException", "CreateAlias", map[string]any{"AliasName": "alias/theirs", "TargetKeyId": other})

	// Nobody authenticated, nothing allowed.
	e.fails(nil, "AccessDeniedException", "ListKeys", map[string]any{})
	e.fails(nil, "AccessDeniedException", "DescribeKey", map[string]any{"KeyId": id})
}

func TestKeyPolicyLockoutCheck(t *testing.T) {
	e := newEnv(t)
	id := e.createKey(nil)
	pol := e.must(e.admin, "GetKeyPolicy", map[string]any{"KeyId": id})
	if pol["Policy"] != e.kms.defaultPolicy() || pol["PolicyName"] != "default" {
		t.Fatalf("default policy: %v", pol)
	}
	lockout := fmt.Sprintf(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::%s:root"},"Action":"kms:Encrypt","Resource":"*"}]}`, e.iam.AccountID())
	e.fails(e.admin, "MalformedPolicyDocumentException", "PutKeyPolicy", map[string]any{"KeyId": id, "Policy": lockout})
	e.fails(e.admin, "MalformedPolicyDocumentException", "CreateKey", map[string]any{"Policy": lockout})
	e.must(e.admin, "PutKeyPolicy", map[string]any{"KeyId": id, "Policy": lockout, "BypassPolicyLockoutSafetyCheck": true})
	e.fails(e.admin, "AccessDeniedException", "PutKeyPolicy", map[string]any{"KeyId": id, "Policy": e.kms.defaultPolicy()})
	e.must(e.admin, "Encrypt", map[string]any{"KeyId": id, "Plaintext": []byte("x")})
}

func TestGoAPI(t *testing.T) {
	e := newEnv(t)
	arn, err := e.kms.DefaultKey(e.ctx, "alias/aws/s3")
	if err != nil {
		t.Fatal(err)
	}
	if again, err := e.kms.DefaultKey(e.ctx, "alias/aws/s3"); err != nil || again != arn {
		t.Fatalf("DefaultKey is not stable: %s, %v", again, err)
	}
	if _, err := e.kms.DefaultKey(e.ctx, "alias/mine"); code(err) != "ValidationException" {
		t.Fatalf("DefaultKey of a customer alias: %v", err)
	}
	md := e.must(e.admin, "DescribeKey", map[string]any{"KeyId": "alias/aws/s3"})["KeyMetadata"].(map[string]any)
	if md["KeyManager"] != "AWS" || md["Arn"] != arn {
		t.Fatalf("AWS managed key: %v", md)
	}
	for _, ref := range []string{"alias/aws/s3", e.kms.aliasARN("alias/aws/s3"), arn, arn[strings.LastIndexByte(arn, '/')+1:]} {
		if got, err := e.kms.ResolveKeyARN(e.ctx, ref); err != nil || got != arn {
			t.Fatalf("ResolveKeyARN(%s) = %s, %v", ref, got, err)
		}
	}
	if _, err := e.kms.ResolveKeyARN(e.ctx, "alias/nothing"); code(err) != "NotFoundException" {
		t.Fatalf("ResolveKeyARN of a missing alias: %v", err)
	}

	// A user with S3 rights but no KMS rights uses the S3 managed key
	// through S3, and only through S3.
	user := e.user("s3user", policyFor("Allow", `"s3:*"`, "*"))
	via := "s3." + testRegion + ".amazonaws.com"
	encCtx := map[string]string{"aws:s3:arn": "arn:aws:s3:::bucket/key"}
	plain, blob, keyARN, err := e.kms.GenerateDataKey(e.ctx, user, "alias/aws/s3", encCtx, via)
	if err != nil || len(plain) != 32 || keyARN != arn {
		t.Fatalf("GenerateDataKey: %d bytes, %s, %v", len(plain), keyARN, err)
	}
	got, keyARN, err := e.kms.Decrypt(e.ctx, user, blob, encCtx, via)
	if err != nil || !bytes.Equal(got, plain) || keyARN != arn {
		t.Fatalf("Decrypt: %v", err)
	}
	if _, _, err := e.kms.Decrypt(e.ctx, user, blob, map[string]string{"aws:s3:arn": "arn:aws:s3:::bucket/other"}, via); code(err) != "InvalidCiphertextException" {
		t.Fatalf("Decrypt with another context: %v", err)
	}
	if _, _, err := e.kms.Decrypt(e.ctx, user, blob, encCtx, "sagemaker."+testRegion+".amazonaws.com"); code(err) != "AccessDenied" {
		t.Fatalf("Decrypt through another service: %v", err)
	}
	if _, _, err := e.kms.Decrypt(e.ctx, user, blob, encCtx, ""); code(err) != "AccessDenied" {
		t.Fatalf("Decrypt directly: %v", err)
	}
	e.fails(e.admin, "AccessDeniedException", "Encrypt", map[string]any{"KeyId": "alias/aws/s3", "Plaintext": []byte("x")})
	e.fails(e.admin, "AccessDeniedException", "DisableKey", map[string]any{"KeyId": arn})
	e.fails(e.admin, "AccessDeniedException", "ScheduleKeyDeletion", map[string]any{"KeyId": arn})

	// A customer key: the caller's IAM policy, with kms:ViaService.
	id := e.createKey(nil)
	viaOnly := e.user("via", fmt.Sprintf(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["kms:GenerateDataKey","kms:Decrypt"],"Resource":"*","Condition":{"StringEquals":{"kms:ViaService":%q}}}]}`, via))
	_, blob, _, err = e.kms.GenerateDataKey(e.ctx, viaOnly, id, nil, via)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.kms.Decrypt(e.ctx, viaOnly, blob, nil, via); err != nil {
		t.Fatal(err)
	}
	e.fails(viaOnly, "AccessDeniedException", "Decrypt", map[string]any{"CiphertextBlob": blob})
	if _, _, _, err := e.kms.GenerateDataKey(e.ctx, nil, id, nil, via); code(err) != "AccessDenied" {
		t.Fatalf("nil principal: %v", err)
	}
	e.must(e.admin, "DisableKey", map[string]any{"KeyId": id})
	if _, _, _, err := e.kms.GenerateDataKey(e.ctx, e.admin, id, nil, via); code(err) != "DisabledException" {
		t.Fatalf("disabled key: %v", err)
	}
	if _, _, err := e.kms.Decrypt(e.ctx, e.admin, []byte("junk"), nil, via); code(err) != "InvalidCiphertextException" {
		t.Fatalf("junk blob: %v", err)
	}
}

func TestListKeysPaging(t *testing.T) {
	e := newEnv(t)
	want := map[string]bool{}
	for range 5 {
		want[e.createKey(nil)] = true
	}
	marker, seen := "", 0
	for page := 0; ; page++ {
		in := map[string]any{"Limit": 2}
		if marker != "" {
			in["Marker"] = marker
		}
		out := e.must(e.admin, "ListKeys", in)
		for _, k := range out["Keys"].([]any) {
			entry := k.(map[string]any)
			id := entry["KeyId"].(string)
			if !want[id] || entry["KeyArn"] != e.kms.keyARN(id) {
				t.Fatalf("unexpected entry %v", entry)
			}
			delete(want, id)
			seen++
		}
		if out["Truncated"] != true {
			break
		}
		marker = out["NextMarker"].(string)
		if page > 5 {
			t.Fatal("paging does not end")
		}
	}
	if seen != 5 || len(want) != 0 {
		t.Fatalf("listed %d keys, missing %v", seen, want)
	}
}

func TestTags(t *testing.T) {
	e := newEnv(t)
	id := e.createKey(nil)
	e.must(e.admin, "TagResource", map[string]any{"KeyId": id, "Tags": []tag{{"a", "1"}, {"b", "2"}}})
	e.must(e.admin, "TagResource", map[string]any{"KeyId": id, "Tags": []tag{{"a", "3"}}})
	e.must(e.admin, "UntagResource", map[string]any{"KeyId": id, "TagKeys": []string{"b"}})
	tags := e.must(e.admin, "ListResourceTags", map[string]any{"KeyId": id})["Tags"].([]any)
	if len(tags) != 1 || tags[0].(map[string]any)["TagValue"] != "3" {
		t.Fatalf("tags: %v", tags)
	}
	e.fails(e.admin, "TagException", "TagResource", map[string]any{"KeyId": id, "Tags": []tag{{"x", "1"}, {"x", "2"}}})
	e.fails(e.admin, "ValidationException", "TagResource", map[string]any{"KeyId": id})
}
