package sigv4

import (
	"crypto/sha256"
	"encoding/base64"
	"hash"
	"hash/crc32"
	"hash/crc64"
	"strings"

	"convoy/internal/fipsexempt"
)

// checksumAlgo is one of the flexible checksums S3 accepts in an
// x-amz-checksum-* header or trailer.
type checksumAlgo struct {
	name   string // as S3 names it: "CRC32"
	header string // lower-case header/trailer name
	size   int    // digest length in bytes
	new    func() hash.Hash
}

var (
	crc32cTable    = crc32.MakeTable(crc32.Castagnoli)
	crc64NVMETable = crc64.MakeTable(0x9a6c9329ac4bc9b5) // 0xad93d23594c93659 bit-reversed
)

var checksumAlgos = []checksumAlgo{
	{"CRC32", "x-amz-checksum-crc32", 4, func() hash.Hash { return crc32.NewIEEE() }},
	{"CRC32C", "x-amz-checksum-crc32c", 4, func() hash.Hash { return crc32.New(crc32cTable) }},
	{"CRC64NVME", "x-amz-checksum-crc64nvme", 8, func() hash.Hash { return crc64.New(crc64NVMETable) }},
	{"SHA1", "x-amz-checksum-sha1", 20, fipsexempt.SHA1},
	{"SHA256", "x-amz-checksum-sha256", 32, sha256.New},
}

func checksumByHeader(name string) *checksumAlgo {
	name = strings.ToLower(name)
	for i := range checksumAlgos {
		if checksumAlgos[i].header == name {
			return &checksumAlgos[i]
		}
	}
	return nil
}

// checksum is a checksum being computed over a body and compared, at the
// end, with the value the client sent.
type checksum struct {
	algo *checksumAlgo
	h    hash.Hash
	want []byte // decoded client value; nil until known (trailers)
}

func newChecksum(a *checksumAlgo) *checksum { return &checksum{algo: a, h: a.new()} }

// setWant decodes the client's base64 value.
func (c *checksum) setWant(b64 string) bool {
	v, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(v) != c.algo.size {
		return false
	}
	c.want = v
	return true
}

// verify compares the computed digest with the client's value and returns
// the computed value in base64.
func (c *checksum) verify() (string, *Error) {
	got := c.h.Sum(nil)
	if string(got) != string(c.want) {
		return "", errorf(ChecksumMismatch, "the "+c.algo.name+" checksum of the body does not match the value sent in "+c.algo.header)
	}
	return base64.StdEncoding.EncodeToString(got), nil
}
