package kms

import (
	"database/sql"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The key management operations.

const maxTags = 50

func (s *Service) createKey(c *call) (any, error) {
	var in struct {
		Policy                         *string
		Description                    string
		KeyUsage                       string
		CustomerMasterKeySpec          string
		KeySpec                        string
		Origin                         string
		CustomKeyStoreId               string
		BypassPolicyLockoutSafetyCheck bool
		Tags                           []tag
		MultiRegion                    bool
		XksKeyId                       string
	}
	if err := c.decode(&in); err != nil {
		return nil, err
	}
	if in.KeySpec != "" && in.CustomerMasterKeySpec != "" {
		return nil, validation("You cannot specify KeySpec and CustomerMasterKeySpec in the same request; use KeySpec.")
	}
	spec := firstOf(in.KeySpec, in.CustomerMasterKeySpec, "SYMMETRIC_DEFAULT")
	usage := firstOf(in.KeyUsage, "ENCRYPT_DECRYPT")
	origin := firstOf(in.Origin, "AWS_KMS")
	if err := firstError(checkLength("description", len(in.Description), 0, 8192),
		checkEnum("keySpec", spec, "RSA_2048", "RSA_3072", "RSA_4096", "ECC_NIST_P256", "ECC_NIST_P384", "ECC_NIST_P521",
			"ECC_SECG_P256K1", "SYMMETRIC_DEFAULT", "HMAC_224", "HMAC_256", "HMAC_384", "HMAC_512", "SM2",
			"ML_DSA_44", "ML_DSA_65", "ML_DSA_87", "ECC_NIST_EDWARDS25519"),
		checkEnum("keyUsage", usage, "SIGN_VERIFY", "ENCRYPT_DECRYPT", "GENERATE_VERIFY_MAC", "KEY_AGREEMENT"),
		checkEnum("origin", origin, "AWS_KMS", "EXTERNAL", "AWS_CLOUDHSM", "EXTERNAL_KEY_STORE"),
		checkTags(in.Tags)); err != nil {
		return nil, err
	}
	switch {
	case spec != "SYMMETRIC_DEFAULT":
		return nil, kmsError("UnsupportedOperationException", "convoy makes only SYMMETRIC_DEFAULT keys, not %s", spec)
	case usage != "ENCRYPT_DECRYPT":
		return nil, validation("KeyUsage %s is not compatible with KeySpec SYMMETRIC_DEFAULT", usage)
	case origin != "AWS_KMS":
		return nil, kmsError("UnsupportedOperationException", "convoy makes only keys of origin AWS_KMS, not %s", origin)
	case in.CustomKeyStoreId != "":
		return nil, kmsError("CustomKeyStoreNotFoundException", "convoy has no custom key stores")
	case in.XksKeyId != "":
		return nil, validation("XksKeyId needs a custom key store of type EXTERNAL_KEY_STORE")
	case in.MultiRegion:
		return nil, kmsError("UnsupportedOperationException", "convoy has one region: multi-Region keys are not supported")
	}
	cond := tagConditions(map[string][]string{
		"kms:KeySpec": {spec}, "kms:KeyUsage": {usage}, "kms:KeyOrigin": {origin}, "kms:MultiRegion": {"false"},
		"kms:BypassPolicyLockoutSafetyCheck": {strconv.FormatBool(in.BypassPolicyLockoutSafetyCheck)},
	}, in.Tags)
	if err := s.authorizeAccount(c.ctx, c.p, "kms:CreateKey", "*", cond); err != nil {
		return nil, err
	}
	if len(in.Tags) > 0 {
		if err := s.authorizeAccount(c.ctx, c.p, "kms:TagResource", "*", cond); err != nil {
			return nil, err
		}
	}
	k := s.newKey(managerCustomer, in.Description, s.defaultPolicy())
	k.Tags = in.Tags
	if in.Policy != nil {
		if err := checkLength("policy", len(*in.Policy), 1, 131072); err != nil {
			return nil, err
		}
		if _, err := parseKeyPolicy(*in.Policy); err != nil {
			return nil, err
		}
		if err := s.lockoutCheck(c.ctx, c.p, k, *in.Policy, in.BypassPolicyLockoutSafetyCheck); err != nil {
			return nil, err
		}
		k.Policy = *in.Policy
	}
	if err := s.db.Tx(c.ctx, func(tx *sql.Tx) error { return s.insertKey(c.ctx, tx, k) }); err != nil {
		return nil, err
	}
	s.log.Info("kms key created", "key", k.ARN, "by", c.p.ARN)
	return keyMetadataOutput{s.metadata(k)}, nil
}

// firstOf returns the first non-empty string.
func firstOf(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}

func (s *Service) describeKey(c *call) (any, error) {
	var in keyIDInput
	if err := c.decode(&in); err != nil {
		return nil, err
	}
	if err := checkGrantTokens(in.GrantTokens); err != nil {
		return nil, err
	}
	k, err := s.target(c, "kms:DescribeKey", in.KeyId, nil)
	if err != nil {
		return nil, err
	}
	return keyMetadataOutput{s.metadata(k)}, nil
}

type listInput struct {
	Limit  *int
	Marker string
}

type keyListEntry struct{ KeyId, KeyArn string }

func (s *Service) listKeys(c *call) (any, error) {
	var in listInput
	if err := c.decode(&in); err != nil {
		return nil, err
	}
	limit, err := checkLimit(in.Limit, 100)
	if err != nil {
		return nil, err
	}
	if _, ok := parseUUID(in.Marker); in.Marker != "" && !ok {
		return nil, kmsError("InvalidMarkerException", "the marker is not one that ListKeys returned")
	}
	if err := s.authorizeAccount(c.ctx, c.p, "kms:ListKeys", "*", nil); err != nil {
		return nil, err
	}
	if err := s.purgeExpired(c.ctx); err != nil {
		return nil, err
	}
	rows, err := s.db.QueryContext(c.ctx, `SELECT key_id FROM kms_keys WHERE state != 'Deleted' AND key_id > ?
		ORDER BY key_id LIMIT ?`, in.Marker, limit+1)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := struct {
		Keys       []keyListEntry
		NextMarker string `json:",omitempty"`
		Truncated  bool
	}{Keys: []keyListEntry{}}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		out.Keys = append(out.Keys, keyListEntry{id, s.keyARN(id)})
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(out.Keys) > limit {
		out.Keys, out.Truncated = out.Keys[:limit], true
		out.NextMarker = out.Keys[limit-1].KeyId
	}
	return out, nil
}

func (s *Service) enableKey(c *call) (any, error) {
	return s.setEnabled(c, "kms:EnableKey", stateEnabled)
}

func (s *Service) disableKey(c *call) (any, error) {
	return s.setEnabled(c, "kms:DisableKey", stateDisabled)
}

func (s *Service) setEnabled(c *call, action, to string) (any, error) {
	var in keyIDInput
	if err := c.decode(&in); err != nil {
		return nil, err
	}
	k, err := s.target(c, action, in.KeyId, nil)
	if err != nil {
		return nil, err
	}
	if err := customerManaged(k, action); err != nil {
		return nil, err
	}
	_, err = s.update(c.ctx, k.ID, func(_ *sql.Tx, k *key) error {
		if k.State == statePendingDeletion {
			return invalidState(k)
		}
		k.State = to
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.log.Info("kms key state changed", "key", k.ARN, "state", to, "by", c.p.ARN)
	return empty{}, nil
}

func (s *Service) scheduleKeyDeletion(c *call) (any, error) {
	var in struct {
		KeyId               string
		PendingWindowInDays *int
	}
	if err := c.decode(&in); err != nil {
		return nil, err
	}
	window := 30
	if in.PendingWindowInDays != nil {
		window = *in.PendingWindowInDays
	}
	if err := checkRange("pendingWindowInDays", window, 7, 30); err != nil {
		return nil, err
	}
	k, err := s.target(c, "kms:ScheduleKeyDeletion", in.KeyId,
		map[string][]string{"kms:ScheduleKeyDeletionPendingWindowInDays": {strconv.Itoa(window)}})
	if err != nil {
		return nil, err
	}
	if err := customerManaged(k, "ScheduleKeyDeletion"); err != nil {
		return nil, err
	}
	k, err = s.update(c.ctx, k.ID, func(_ *sql.Tx, k *key) error {
		if k.State == statePendingDeletion {
			return invalidState(k)
		}
		k.State, k.PendingDays = statePendingDeletion, window
		k.DeletionDate = s.now().UTC().Add(days(window))
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.log.Info("kms key scheduled for deletion", "key", k.ARN, "deletion_date", k.DeletionDate, "by", c.p.ARN)
	return struct {
		KeyId               string
		DeletionDate        *epochTime
		KeyState            string
		PendingWindowInDays int
	}{k.ARN, epoch(k.DeletionDate), k.State, window}, nil
}

func (s *Service) cancelKeyDeletion(c *call) (any, error) {
	var in keyIDInput
	if err := c.decode(&in); err != nil {
		return nil, err
	}
	k, err := s.target(c, "kms:CancelKeyDeletion", in.KeyId, nil)
	if err != nil {
		return nil, err
	}
	_, err = s.update(c.ctx, k.ID, func(_ *sql.Tx, k *key) error {
		if k.State != statePendingDeletion {
			return kmsError("KMSInvalidStateException", "%s is not pending deletion.", k.ARN)
		}
		// As AWS: a key rescued from deletion comes back disabled.
		k.State, k.DeletionDate, k.PendingDays = stateDisabled, time.Time{}, 0
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.log.Info("kms key deletion cancelled", "key", k.ARN, "by", c.p.ARN)
	return keyIDOutput{k.ARN}, nil
}

// Key rotation.

func (s *Service) enableKeyRotation(c *call) (any, error) {
	var in struct {
		KeyId                string
		RotationPeriodInDays *int
	}
	if err := c.decode(&in); err != nil {
		return nil, err
	}
	period := 365
	if in.RotationPeriodInDays != nil {
		period = *in.RotationPeriodInDays
	}
	if err := checkRange("rotationPeriodInDays", period, 90, 2560); err != nil {
		return nil, err
	}
	k, err := s.target(c, "kms:EnableKeyRotation", in.KeyId, map[string][]string{"kms:RotationPeriodInDays": {strconv.Itoa(period)}})
	if err != nil {
		return nil, err
	}
	if err := customerManaged(k, "EnableKeyRotation"); err != nil {
		return nil, err
	}
	_, err = s.update(c.ctx, k.ID, func(_ *sql.Tx, k *key) error {
		if err := usable(k); err != nil {
			return err
		}
		k.RotationEnabled, k.RotationPeriod = true, period
		k.NextRotation = s.now().UTC().Add(days(period))
		return nil
	})
	if err != nil {
		return nil, err
	}
	return empty{}, nil
}

func (s *Service) disableKeyRotation(c *call) (any, error) {
	var in keyIDInput
	if err := c.decode(&in); err != nil {
		return nil, err
	}
	k, err := s.target(c, "kms:DisableKeyRotation", in.KeyId, nil)
	if err != nil {
		return nil, err
	}
	if err := customerManaged(k, "DisableKeyRotation"); err != nil {
		return nil, err
	}
	_, err = s.update(c.ctx, k.ID, func(_ *sql.Tx, k *key) error {
		if err := usable(k); err != nil {
			return err
		}
		k.RotationEnabled, k.NextRotation = false, time.Time{}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return empty{}, nil
}

func (s *Service) getKeyRotationStatus(c *call) (any, error) {
	var in keyIDInput
	if err := c.decode(&in); err != nil {
		return nil, err
	}
	k, err := s.target(c, "kms:GetKeyRotationStatus", in.KeyId, nil)
	if err != nil {
		return nil, err
	}
	out := struct {
		KeyRotationEnabled   bool
		KeyId                string
		RotationPeriodInDays int        `json:",omitempty"`
		NextRotationDate     *epochTime `json:",omitempty"`
	}{KeyRotationEnabled: k.RotationEnabled, KeyId: k.ARN}
	if k.RotationEnabled {
		out.RotationPeriodInDays, out.NextRotationDate = k.RotationPeriod, epoch(k.NextRotation)
	}
	return out, nil
}

func (s *Service) rotateKeyOnDemand(c *call) (any, error) {
	var in keyIDInput
	if err := c.decode(&in); err != nil {
		return nil, err
	}
	k, err := s.target(c, "kms:RotateKeyOnDemand", in.KeyId, nil)
	if err != nil {
		return nil, err
	}
	if err := customerManaged(k, "RotateKeyOnDemand"); err != nil {
		return nil, err
	}
	k, err = s.update(c.ctx, k.ID, func(tx *sql.Tx, k *key) error {
		if err := usable(k); err != nil {
			return err
		}
		if k.OnDemandRotations >= maxOnDemandRotations {
			return kmsError("LimitExceededException", "%s has been rotated on demand %d times, the most a key may be.", k.ARN, maxOnDemandRotations)
		}
		k.OnDemandRotations++
		return s.addVersion(c.ctx, tx, k, rotationOnDemand)
	})
	if err != nil {
		return nil, err
	}
	s.log.Info("kms key rotated", "key", k.ARN, "rotation", rotationOnDemand, "version", k.CurrentVersion, "by", c.p.ARN)
	return keyIDOutput{k.ID}, nil
}

type rotationEntry struct {
	KeyId            string
	KeyMaterialId    string
	KeyMaterialState string
	RotationDate     *epochTime `json:",omitempty"`
	RotationType     string     `json:",omitempty"`
}

func (s *Service) listKeyRotations(c *call) (any, error) {
	var in struct {
		KeyId              string
		IncludeKeyMaterial string
		Limit              *int
		Marker             string
	}
	if err := c.decode(&in); err != nil {
		return nil, err
	}
	limit, err := checkLimit(in.Limit, 100)
	if err != nil {
		return nil, err
	}
	include := firstOf(in.IncludeKeyMaterial, "ROTATIONS_ONLY")
	if err := checkEnum("includeKeyMaterial", include, "ALL_KEY_MATERIAL", "ROTATIONS_ONLY"); err != nil {
		return nil, err
	}
	after := 0
	if in.Marker != "" {
		if after, err = strconv.Atoi(in.Marker); err != nil || after < 0 {
			return nil, kmsError("InvalidMarkerException", "the marker is not one that ListKeyRotations returned")
		}
	}
	k, err := s.target(c, "kms:ListKeyRotations", in.KeyId, nil)
	if err != nil {
		return nil, err
	}
	versions, err := s.versions(c.ctx, k.ID)
	if err != nil {
		return nil, err
	}
	out := struct {
		Rotations  []rotationEntry
		NextMarker string `json:",omitempty"`
		Truncated  bool
	}{Rotations: []rotationEntry{}}
	for _, v := range versions {
		if int(v.version) <= after || (v.rotationType == "" && include == "ROTATIONS_ONLY") {
			continue
		}
		if len(out.Rotations) == limit {
			out.Truncated = true
			out.NextMarker = strconv.Itoa(after)
			break
		}
		e := rotationEntry{KeyId: k.ID, KeyMaterialId: keyMaterialID(k.ID, v.version), KeyMaterialState: "NON_CURRENT"}
		if v.version == k.CurrentVersion {
			e.KeyMaterialState = "CURRENT"
		}
		if v.rotationType != "" {
			e.RotationDate, e.RotationType = epoch(v.created), v.rotationType
		}
		out.Rotations = append(out.Rotations, e)
		after = int(v.version)
	}
	return out, nil
}

// Key policies.

var policyNameRE = regexp.MustCompile(`^\w{1,128}$`)

func checkPolicyName(name string) error {
	if name != "" && !policyNameRE.MatchString(name) {
		return validation("1 validation error detected: Value '%s' at 'policyName' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w]+", name)
	}
	return nil
}

func noSuchPolicy(name string) error {
	return kmsError("NotFoundException", "Policy %q does not exist: a key has one policy, named \"default\".", name)
}

func (s *Service) getKeyPolicy(c *call) (any, error) {
	var in struct{ KeyId, PolicyName string }
	if err := c.decode(&in); err != nil {
		return nil, err
	}
	if err := checkPolicyName(in.PolicyName); err != nil {
		return nil, err
	}
	k, err := s.target(c, "kms:GetKeyPolicy", in.KeyId, nil)
	if err != nil {
		return nil, err
	}
	if name := firstOf(in.PolicyName, "default"); name != "default" {
		return nil, noSuchPolicy(name)
	}
	return struct{ Policy, PolicyName string }{k.Policy, "default"}, nil
}

func (s *Service) putKeyPolicy(c *call) (any, error) {
	var in struct {
		KeyId                          string
		PolicyName                     string
		Policy                         *string
		BypassPolicyLockoutSafetyCheck bool
	}
	if err := c.decode(&in); err != nil {
		return nil, err
	}
	if in.Policy == nil {
		return nil, missing("policy")
	}
	if err := firstError(checkPolicyName(in.PolicyName), checkLength("policy", len(*in.Policy), 1, 131072)); err != nil {
		return nil, err
	}
	k, err := s.target(c, "kms:PutKeyPolicy", in.KeyId,
		map[string][]string{"kms:BypassPolicyLockoutSafetyCheck": {strconv.FormatBool(in.BypassPolicyLockoutSafetyCheck)}})
	if err != nil {
		return nil, err
	}
	if name := firstOf(in.PolicyName, "default"); name != "default" {
		return nil, noSuchPolicy(name)
	}
	if err := customerManaged(k, "PutKeyPolicy"); err != nil {
		return nil, err
	}
	if _, err := parseKeyPolicy(*in.Policy); err != nil {
		return nil, err
	}
	if err := s.lockoutCheck(c.ctx, c.p, k, *in.Policy, in.BypassPolicyLockoutSafetyCheck); err != nil {
		return nil, err
	}
	_, err = s.update(c.ctx, k.ID, func(_ *sql.Tx, k *key) error {
		k.Policy = *in.Policy
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.log.Info("kms key policy changed", "key", k.ARN, "by", c.p.ARN)
	return empty{}, nil
}

// Tags.

func checkTags(tags []tag) error {
	if len(tags) > maxTags {
		return kmsError("TagException", "a key has at most %d tags", maxTags)
	}
	seen := map[string]bool{}
	for _, t := range tags {
		if err := firstError(checkLength("tags.member.tagKey", len(t.TagKey), 1, 128),
			checkLength("tags.member.tagValue", len(t.TagValue), 0, 256)); err != nil {
			return err
		}
		if strings.HasPrefix(strings.ToLower(t.TagKey), "aws:") {
			return kmsError("TagException", "tag keys beginning with aws: are reserved for AWS")
		}
		if seen[t.TagKey] {
			return kmsError("TagException", "duplicate tag key %q", t.TagKey)
		}
		seen[t.TagKey] = true
	}
	return nil
}

func (s *Service) listResourceTags(c *call) (any, error) {
	var in struct {
		KeyId  string
		Limit  *int
		Marker string
	}
	if err := c.decode(&in); err != nil {
		return nil, err
	}
	limit, err := checkLimit(in.Limit, 50)
	if err != nil {
		return nil, err
	}
	start := 0
	if in.Marker != "" {
		if start, err = strconv.Atoi(in.Marker); err != nil || start < 0 {
			return nil, kmsError("InvalidMarkerException", "the marker is not one that ListResourceTags returned")
		}
	}
	k, err := s.target(c, "kms:ListResourceTags", in.KeyId, nil)
	if err != nil {
		return nil, err
	}
	out := struct {
		Tags       []tag
		NextMarker string `json:",omitempty"`
		Truncated  bool
	}{Tags: []tag{}}
	if start < len(k.Tags) {
		out.Tags = k.Tags[start:]
	}
	if len(out.Tags) > limit {
		out.Tags, out.Truncated, out.NextMarker = out.Tags[:limit], true, strconv.Itoa(start+limit)
	}
	return out, nil
}

func (s *Service) tagResource(c *call) (any, error) {
	var in struct {
		KeyId string
		Tags  []tag
	}
	if err := c.decode(&in); err != nil {
		return nil, err
	}
	if in.Tags == nil {
		return nil, missing("tags")
	}
	if err := checkTags(in.Tags); err != nil {
		return nil, err
	}
	k, err := s.target(c, "kms:TagResource", in.KeyId, tagConditions(nil, in.Tags))
	if err != nil {
		return nil, err
	}
	_, err = s.update(c.ctx, k.ID, func(_ *sql.Tx, k *key) error {
		if k.State == statePendingDeletion {
			return invalidState(k)
		}
		for _, t := range in.Tags {
			if i := slices.IndexFunc(k.Tags, func(have tag) bool { return have.TagKey == t.TagKey }); i >= 0 {
				k.Tags[i].TagValue = t.TagValue
			} else {
				k.Tags = append(k.Tags, t)
			}
		}
		if len(k.Tags) > maxTags {
			return kmsError("LimitExceededException", "a key has at most %d tags", maxTags)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return empty{}, nil
}

func (s *Service) untagResource(c *call) (any, error) {
	var in struct {
		KeyId   string
		TagKeys []string
	}
	if err := c.decode(&in); err != nil {
		return nil, err
	}
	if in.TagKeys == nil {
		return nil, missing("tagKeys")
	}
	k, err := s.target(c, "kms:UntagResource", in.KeyId, map[string][]string{"aws:TagKeys": in.TagKeys})
	if err != nil {
		return nil, err
	}
	_, err = s.update(c.ctx, k.ID, func(_ *sql.Tx, k *key) error {
		if k.State == statePendingDeletion {
			return invalidState(k)
		}
		k.Tags = slices.DeleteFunc(k.Tags, func(t tag) bool { return slices.Contains(in.TagKeys, t.TagKey) })
		return nil
	})
	if err != nil {
		return nil, err
	}
	return empty{}, nil
}
