package kms

import "crypto/rand"

// The cryptographic operations.

type encryptInput struct {
	KeyId               string
	Plaintext           []byte
	EncryptionContext   map[string]string
	GrantTokens         []string
	EncryptionAlgorithm string
	DryRun              bool
}

func (s *Service) encryptOp(c *call) (any, error) {
	var in encryptInput
	if err := c.decode(&in); err != nil {
		return nil, err
	}
	if err := checkKeyRef("keyId", in.KeyId); err != nil {
		return nil, err
	}
	if in.Plaintext == nil {
		return nil, missing("plaintext")
	}
	if err := firstError(checkLength("plaintext", len(in.Plaintext), 1, maxPlaintext),
		checkGrantTokens(in.GrantTokens), checkAlgorithm("encryptionAlgorithm", in.EncryptionAlgorithm)); err != nil {
		return nil, err
	}
	k, err := s.useKey(c.ctx, c.p, "kms:Encrypt", in.KeyId, in.EncryptionContext, "")
	if err != nil {
		return nil, err
	}
	if in.DryRun {
		return nil, dryRun()
	}
	blob, err := s.encrypt(c.ctx, k, in.Plaintext, in.EncryptionContext)
	if err != nil {
		return nil, err
	}
	return struct {
		CiphertextBlob      []byte
		KeyId               string
		EncryptionAlgorithm string
	}{blob, k.ARN, "SYMMETRIC_DEFAULT"}, nil
}

type decryptInput struct {
	CiphertextBlob      []byte
	EncryptionContext   map[string]string
	GrantTokens         []string
	KeyId               string
	EncryptionAlgorithm string
	DryRun              bool
}

func (s *Service) decryptOp(c *call) (any, error) {
	var in decryptInput
	if err := c.decode(&in); err != nil {
		return nil, err
	}
	if err := firstError(checkBlob("ciphertextBlob", in.CiphertextBlob), checkGrantTokens(in.GrantTokens),
		checkLength("keyId", len(in.KeyId), 0, 2048), checkAlgorithm("encryptionAlgorithm", in.EncryptionAlgorithm)); err != nil {
		return nil, err
	}
	plain, k, version, err := s.decrypt(c.ctx, c.p, "kms:Decrypt", in.CiphertextBlob, in.EncryptionContext, in.KeyId, "")
	if err != nil {
		return nil, err
	}
	if in.DryRun {
		return nil, dryRun()
	}
	return struct {
		KeyId               string
		Plaintext           []byte
		EncryptionAlgorithm string
		KeyMaterialId       string
	}{k.ARN, plain, "SYMMETRIC_DEFAULT", keyMaterialID(k.ID, version)}, nil
}

type generateDataKeyInput struct {
	KeyId             string
	EncryptionContext map[string]string
	NumberOfBytes     *int
	KeySpec           string
	GrantTokens       []string
	DryRun            bool
}

// length is the data key's size: KeySpec or NumberOfBytes, exactly one.
func (in *generateDataKeyInput) length() (int, error) {
	switch {
	case in.KeySpec != "" && in.NumberOfBytes != nil:
		return 0, validation("Specify either KeySpec or NumberOfBytes, not both.")
	case in.KeySpec == "AES_256":
		return 32, nil
	case in.KeySpec == "AES_128":
		return 16, nil
	case in.KeySpec != "":
		return 0, checkEnum("keySpec", in.KeySpec, "AES_256", "AES_128")
	case in.NumberOfBytes != nil:
		return *in.NumberOfBytes, checkRange("numberOfBytes", *in.NumberOfBytes, 1, 1024)
	}
	return 0, validation("Specify either KeySpec or NumberOfBytes.")
}

func (s *Service) generateDataKeyCommon(c *call, action string) (*key, []byte, []byte, error) {
	var in generateDataKeyInput
	if err := c.decode(&in); err != nil {
		return nil, nil, nil, err
	}
	if err := firstError(checkKeyRef("keyId", in.KeyId), checkGrantTokens(in.GrantTokens)); err != nil {
		return nil, nil, nil, err
	}
	n, err := in.length()
	if err != nil {
		return nil, nil, nil, err
	}
	k, err := s.useKey(c.ctx, c.p, action, in.KeyId, in.EncryptionContext, "")
	if err != nil {
		return nil, nil, nil, err
	}
	if in.DryRun {
		return nil, nil, nil, dryRun()
	}
	plain, blob, err := s.generate(c.ctx, k, n, in.EncryptionContext)
	return k, plain, blob, err
}

func (s *Service) generateDataKey(c *call) (any, error) {
	k, plain, blob, err := s.generateDataKeyCommon(c, "kms:GenerateDataKey")
	if err != nil {
		return nil, err
	}
	return struct {
		CiphertextBlob []byte
		Plaintext      []byte
		KeyId          string
		KeyMaterialId  string
	}{blob, plain, k.ARN, keyMaterialID(k.ID, k.CurrentVersion)}, nil
}

func (s *Service) generateDataKeyWithoutPlaintext(c *call) (any, error) {
	k, plain, blob, err := s.generateDataKeyCommon(c, "kms:GenerateDataKeyWithoutPlaintext")
	if err != nil {
		return nil, err
	}
	clear(plain)
	return struct {
		CiphertextBlob []byte
		KeyId          string
		KeyMaterialId  string
	}{blob, k.ARN, keyMaterialID(k.ID, k.CurrentVersion)}, nil
}

func (s *Service) reEncrypt(c *call) (any, error) {
	var in struct {
		CiphertextBlob                 []byte
		SourceEncryptionContext        map[string]string
		SourceKeyId                    string
		DestinationKeyId               string
		DestinationEncryptionContext   map[string]string
		SourceEncryptionAlgorithm      string
		DestinationEncryptionAlgorithm string
		GrantTokens                    []string
		DryRun                         bool
	}
	if err := c.decode(&in); err != nil {
		return nil, err
	}
	if err := firstError(checkBlob("ciphertextBlob", in.CiphertextBlob), checkKeyRef("destinationKeyId", in.DestinationKeyId),
		checkLength("sourceKeyId", len(in.SourceKeyId), 0, 2048), checkGrantTokens(in.GrantTokens),
		checkAlgorithm("sourceEncryptionAlgorithm", in.SourceEncryptionAlgorithm),
		checkAlgorithm("destinationEncryptionAlgorithm", in.DestinationEncryptionAlgorithm)); err != nil {
		return nil, err
	}
	plain, src, version, err := s.decrypt(c.ctx, c.p, "kms:ReEncryptFrom", in.CiphertextBlob, in.SourceEncryptionContext, in.SourceKeyId, "")
	if err != nil {
		return nil, err
	}
	defer clear(plain)
	dst, err := s.useKey(c.ctx, c.p, "kms:ReEncryptTo", in.DestinationKeyId, in.DestinationEncryptionContext, "")
	if err != nil {
		return nil, err
	}
	if in.DryRun {
		return nil, dryRun()
	}
	blob, err := s.encrypt(c.ctx, dst, plain, in.DestinationEncryptionContext)
	if err != nil {
		return nil, err
	}
	return struct {
		CiphertextBlob                 []byte
		SourceKeyId                    string
		KeyId                          string
		SourceEncryptionAlgorithm      string
		DestinationEncryptionAlgorithm string
		SourceKeyMaterialId            string
		DestinationKeyMaterialId       string
	}{blob, src.ARN, dst.ARN, "SYMMETRIC_DEFAULT", "SYMMETRIC_DEFAULT",
		keyMaterialID(src.ID, version), keyMaterialID(dst.ID, dst.CurrentVersion)}, nil
}

func (s *Service) generateRandom(c *call) (any, error) {
	var in struct {
		NumberOfBytes    *int
		CustomKeyStoreId string
	}
	if err := c.decode(&in); err != nil {
		return nil, err
	}
	if in.NumberOfBytes == nil {
		return nil, missing("numberOfBytes")
	}
	if err := checkRange("numberOfBytes", *in.NumberOfBytes, 1, 1024); err != nil {
		return nil, err
	}
	if in.CustomKeyStoreId != "" {
		return nil, kmsError("CustomKeyStoreNotFoundException", "convoy has no custom key stores")
	}
	if err := s.authorizeAccount(c.ctx, c.p, "kms:GenerateRandom", "*", nil); err != nil {
		return nil, err
	}
	b := make([]byte, *in.NumberOfBytes)
	rand.Read(b)
	return struct{ Plaintext []byte }{b}, nil
}

func firstError(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
