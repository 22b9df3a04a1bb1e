// Package sigv4 verifies AWS Signature Version 4 (AWS4-HMAC-SHA256) on
// incoming HTTP requests, as the aws CLI, boto3 and the AWS SDKs sign them:
// the Authorization header, presigned URLs (X-Amz-* query parameters), and
// bodies — a signed payload hash, and aws-chunked bodies with per-chunk and
// trailer signatures and trailing x-amz-checksum-* values (CRC32, CRC32C,
// CRC64NVME, SHA1, SHA256).
//
// Written by hand, all of it: the AWS SDKs contain only the signing half,
// and no maintained Go library verifies SigV4 on the server side (MinIO's
// verifier lives inside its server package). The canonical request follows
// aws-sdk-go-v2's signer (aws/signer/v4) and botocore's auth.py; the tests
// sign with both, and with the aws CLI, and verify here.
//
// Verify checks everything it can before the handler runs. What it cannot —
// a streamed S3 body — it checks while the handler reads: Result.Body (also
// installed as r.Body) returns an *Error instead of io.EOF when the body
// does not match, so a handler must not commit anything before it has read
// the body to a clean io.EOF.
package sigv4

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"hash"
	"io"
	"net/http"
	"strings"
	"time"
)

// Lookup resolves an access key ID — and, for temporary credentials, the
// session token sent in X-Amz-Security-Token ("" if none) — to the secret
// access key. It returns an *Error of Kind UnknownAccessKey, InvalidToken or
// ExpiredToken when the client is at fault; any other error is reported as
// Kind Internal.
type Lookup func(ctx context.Context, accessKeyID, sessionToken string) (secret string, err error)

// Verifier verifies SigV4 signatures. Its zero value, given a Lookup, is
// ready to use; a Verifier must not be copied after first use (it caches
// signing keys).
type Verifier struct {
	Lookup Lookup
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
	// MaxSkew is how far a request's time may be from Now, either way;
	// 0 means 15 minutes.
	MaxSkew time.Duration
	// MaxBufferedBody bounds the bodies Verify reads to hash them (services
	// other than S3 do not send x-amz-content-sha256); 0 means 32 MiB.
	// A larger body fails with Kind BodyTooLarge.
	MaxBufferedBody int64

	keys keyCache
}

// Result is a verified request.
type Result struct {
	AccessKeyID, SessionToken string
	// Region and Service are those of the credential scope.
	Region, Service string
	SignedAt        time.Time
	Presigned       bool
	// PayloadHash is the payload hash that was signed: 64 hex digits,
	// UNSIGNED-PAYLOAD or one of the STREAMING-* values.
	PayloadHash string

	// Body replaces r.Body. For a hex x-amz-content-sha256 it hashes while
	// reading and returns an *Error (PayloadHashMismatch) instead of io.EOF
	// if the hash differs; for aws-chunked bodies it decodes the chunks,
	// verifying every chunk signature, the trailer signature, the checksum
	// and the decoded length, and returns an *Error before io.EOF on any
	// mismatch. For UNSIGNED-PAYLOAD it is the raw body (with its
	// x-amz-checksum-* header, if any, verified at io.EOF).
	Body io.ReadCloser
	// DecodedContentLength is the length of the body Body yields: for
	// aws-chunked x-amz-decoded-content-length, otherwise Content-Length;
	// -1 if unknown.
	DecodedContentLength int64
	// Checksum names the algorithm of the x-amz-checksum-* header or trailer
	// that Body verifies ("CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256"),
	// or is "" if the request has none.
	Checksum string

	checksumValue string
}

// ChecksumValue returns the checksum algorithm and, once Body has been read
// to io.EOF and the checksum matched, its base64 value ("" before).
func (r *Result) ChecksumValue() (algo, b64 string) { return r.Checksum, r.checksumValue }

// The x-amz-content-sha256 values that are not a hash.
const (
	unsignedPayload                 = "UNSIGNED-PAYLOAD"
	streamingSignedPayload          = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
	streamingSignedPayloadTrailer   = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
	streamingUnsignedPayloadTrailer = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
)

const emptySHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

// Verify checks the SigV4 signature of r and returns who signed it. On
// success r.Body is replaced by Result.Body. Errors are *Error.
func (v *Verifier) Verify(r *http.Request) (*Result, error) {
	res, err := v.verify(r)
	if err != nil {
		return nil, err
	}
	r.Body = res.Body
	return res, nil
}

// authInfo is what either authentication style says about the signature.
type authInfo struct {
	cred      credential
	amzDate   string
	signedAt  time.Time
	token     string
	presigned bool
	// presignHash is the query's X-Amz-Content-Sha256 ("" if none).
	presignHash string
}

func (v *Verifier) verify(r *http.Request) (*Result, *Error) {
	if v.Lookup == nil {
		return nil, &Error{Kind: Internal, Msg: "no Lookup configured"}
	}
	wirePath, rawQuery := requestTarget(r)
	a, ps, err := v.authenticate(r, rawQuery)
	if err == nil {
		var res *Result
		if res, err = v.verifyAuthenticated(r, &a, ps, wirePath); err == nil {
			return res, nil
		}
	}
	err.presigned = a.presigned
	return nil, err
}

// verifyAuthenticated checks the signature of a request whose
// authentication parsed, and sets up Result.Body.
func (v *Verifier) verifyAuthenticated(r *http.Request, a *authInfo, ps []param, wirePath string) (*Result, *Error) {
	cred := &a.cred
	s3 := cred.service == "s3"
	if s3 {
		if err := checkAmzHeadersSigned(r, cred); err != nil {
			return nil, err
		}
	} else if err := checkRoutingHeadersSigned(r, cred); err != nil {
		return nil, err
	}
	ph, pk, err := signedPayloadHash(r, a)
	if err != nil {
		return nil, err
	}
	// Bodies of services other than S3 are small and read whole by their
	// handlers (which may stop short of EOF): hash them here.
	buffer := ph == "" || (pk == payloadHex && !s3)

	secret, err := v.lookup(r.Context(), cred.accessKeyID, a.token)
	if err != nil {
		return nil, err
	}
	var body []byte
	var bodySum [sha256.Size]byte
	if buffer {
		if body, bodySum, err = v.readBody(r); err != nil {
			return nil, err
		}
	}
	signedHash := ph
	if ph == "" {
		signedHash = hex.EncodeToString(bodySum[:])
	}
	key := v.keys.signingKey(secret, cred.date, cred.region, cred.service)
	if err := checkSignature(r, a, ps, wirePath, key, signedHash); err != nil {
		return nil, err
	}

	res := &Result{
		AccessKeyID:          cred.accessKeyID,
		SessionToken:         a.token,
		Region:               cred.region,
		Service:              cred.service,
		SignedAt:             a.signedAt,
		Presigned:            a.presigned,
		PayloadHash:          signedHash,
		DecodedContentLength: r.ContentLength,
	}
	src := r.Body
	if src == nil {
		src = http.NoBody
	}
	if buffer {
		if ph != "" && !hashEqual(ph, bodySum[:]) {
			return nil, errorf(PayloadHashMismatch, "the provided x-amz-content-sha256 does not match what was computed")
		}
		res.Body = bufferedBody{bytes.NewReader(body), body, src}
		res.DecodedContentLength = int64(len(body))
		return res, nil
	}

	var ck *checksum
	if s3 {
		if ck, err = headerChecksum(r); err != nil {
			return nil, err
		}
		if ck != nil {
			res.Checksum = ck.algo.name
		}
	}
	switch pk {
	case payloadUnsigned, payloadHex:
		res.Body = src
		if pk == payloadHex || ck != nil {
			vb := &verifyingBody{src: src, res: res, ck: ck}
			if pk == payloadHex {
				vb.sha, vb.wantSHA = sha256.New(), ph
			}
			res.Body = vb
		}
	default:
		cr, err := newChunkedReader(r, src, res, pk, ck, key, a.amzDate, cred.scope, cred.signature[:])
		if err != nil {
			return nil, err
		}
		res.Body = cr
		r.ContentLength = res.DecodedContentLength
	}
	return res, nil
}

// signedPayloadHash returns the payload hash the client signed and its kind, or
// "" if it is the SHA-256 of a body the client did not hash for us.
func signedPayloadHash(r *http.Request, a *authInfo) (string, payloadKind, *Error) {
	ph := ""
	s3 := a.cred.service == "s3"
	switch {
	case !a.presigned:
		ph = r.Header.Get("X-Amz-Content-Sha256")
		if ph == "" && s3 {
			return "", 0, errorf(Malformed, "missing required header x-amz-content-sha256")
		}
	case a.presignHash != "":
		ph = a.presignHash
	case a.cred.signs("x-amz-content-sha256") && r.Header.Get("X-Amz-Content-Sha256") != "":
		ph = r.Header.Get("X-Amz-Content-Sha256") // botocore's presigner does this
	case s3:
		ph = unsignedPayload
	}
	if ph == "" {
		return "", payloadHex, nil
	}
	pk, err := classifyPayload(ph)
	return ph, pk, err
}

// checkSignature compares the request's signature with the one computed
// over each candidate canonical request.
func checkSignature(r *http.Request, a *authInfo, ps []param, wirePath string, key []byte, payloadHash string) *Error {
	var first []byte
	for _, uri := range canonicalURIs(a.cred.service, wirePath) {
		canonical := buildCanonicalRequest(r, uri, ps, a.presigned, &a.cred, payloadHash)
		if first == nil {
			first = canonical
		}
		sum := sha256.Sum256(canonical)
		sts := make([]byte, 0, 128)
		sts = append(sts, algorithm+"\n"...)
		sts = append(sts, a.amzDate...)
		sts = append(sts, '\n')
		sts = append(sts, a.cred.scope...)
		sts = append(sts, '\n')
		sts = hex.AppendEncode(sts, sum[:])
		m := hmac.New(sha256.New, key)
		m.Write(sts)
		if hmac.Equal(m.Sum(nil), a.cred.signature[:]) {
			return nil
		}
	}
	e := errorf(BadSignature, "the request signature we calculated does not match the signature you provided; check your key and signing method")
	e.canonical = string(first)
	return e
}

func sha256Sum(b []byte) []byte {
	s := sha256.Sum256(b)
	return s[:]
}

// authenticate finds and parses the request's authentication: the
// Authorization header or a presigned query, never both. It checks the
// request time and the scope date.
func (v *Verifier) authenticate(r *http.Request, rawQuery string) (authInfo, []param, *Error) {
	var a authInfo
	auths := r.Header["Authorization"]
	if len(auths) == 1 && auths[0] == "" {
		auths = nil
	}
	ps, qerr := parseQuery(rawQuery)
	presign := false
	for _, p := range ps {
		switch p.key {
		case "X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature":
			presign = true
		}
	}
	switch {
	case len(auths) > 1:
		return a, nil, errorf(Malformed, "more than one Authorization header")
	case len(auths) == 1 && presign:
		return a, nil, errorf(Malformed, "only one auth mechanism allowed; only the X-Amz-Algorithm query parameter or the Authorization header should be specified")
	case len(auths) == 1:
		auth := auths[0]
		if qerr != nil {
			return a, nil, qerr
		}
		cred, err := parseAuthorization(auth)
		if err != nil {
			return a, nil, err
		}
		a.cred = cred
		dateHeader := "x-amz-date"
		if d := r.Header.Get("X-Amz-Date"); d != "" {
			t, ok := parseAmzDate(d)
			if !ok {
				return a, nil, errorf(Malformed, "X-Amz-Date "+quoteShort(d)+" is not in the form 20060102T150405Z")
			}
			a.amzDate, a.signedAt = d, t
		} else if d := r.Header.Get("Date"); d != "" {
			t, err := http.ParseTime(d)
			if err != nil {
				// botocore writes email.utils.formatdate: "-0000", not "GMT"
				t, err = time.Parse(time.RFC1123Z, d)
			}
			if err != nil {
				return a, nil, errorf(Malformed, "Date "+quoteShort(d)+" is not an HTTP date")
			}
			a.signedAt = t.UTC()
			a.amzDate = a.signedAt.Format(amzDateForm)
			dateHeader = "date"
		} else {
			return a, nil, errorf(Malformed, "the request has neither X-Amz-Date nor Date")
		}
		if !cred.signs(dateHeader) {
			return a, nil, errorf(Malformed, "SignedHeaders must include "+dateHeader)
		}
		a.token = r.Header.Get("X-Amz-Security-Token")
		now := v.now()
		if d := now.Sub(a.signedAt); d > v.maxSkew() || d < -v.maxSkew() {
			return a, nil, errorf(Skewed, "the difference between the request time ("+a.amzDate+") and the current time ("+now.UTC().Format(amzDateForm)+") is too large")
		}
	case presign:
		a.presigned = true
		if qerr != nil {
			return a, nil, qerr
		}
		q, err := parsePresign(ps)
		if err != nil {
			return a, nil, err
		}
		a.cred, a.token, a.presignHash, a.amzDate = q.cred, q.token, q.payloadHash, q.amzDate
		t, ok := parseAmzDate(q.amzDate)
		if !ok {
			return a, nil, errorf(Malformed, "X-Amz-Date "+quoteShort(q.amzDate)+" is not in the form 20060102T150405Z")
		}
		a.signedAt = t
		expires := q.expires
		if expires == 0 {
			if a.cred.service == "s3" {
				return a, nil, errorf(Malformed, "query is missing X-Amz-Expires")
			}
			expires = 15 * time.Minute // what STS assumes for a presigned GetCallerIdentity
		}
		now := v.now()
		if t.After(now.Add(v.maxSkew())) {
			return a, nil, errorf(Skewed, "X-Amz-Date ("+a.amzDate+") is in the future")
		}
		if now.After(t.Add(expires)) {
			return a, nil, errorf(PresignExpired, "request has expired")
		}
	default:
		var v2 [2]bool
		for _, p := range ps {
			v2[0] = v2[0] || p.key == "AWSAccessKeyId"
			v2[1] = v2[1] || p.key == "Signature"
		}
		if v2[0] && v2[1] {
			// boto3 and aws CLI v1 presign S3 URLs so unless configured
			// with signature_version = s3v4.
			return a, nil, errorf(UnsupportedAlgorithm, "signature version 2 is not supported; use AWS4-HMAC-SHA256 (boto3, aws CLI v1: s3 signature_version = s3v4)")
		}
		return a, nil, errorf(MissingAuth, "the request is not signed")
	}
	if a.amzDate[:8] != a.cred.date {
		return a, nil, errorf(Malformed, "credential date "+a.cred.date+" is not the date of the request time "+a.amzDate)
	}
	return a, ps, nil
}

func (v *Verifier) lookup(ctx context.Context, akid, token string) (string, *Error) {
	secret, err := v.Lookup(ctx, akid, token)
	if err != nil {
		var e *Error
		if errors.As(err, &e) {
			c := *e
			return "", &c
		}
		return "", &Error{Kind: Internal, Msg: "looking up the access key failed", cause: err}
	}
	if secret == "" {
		return "", errorf(UnknownAccessKey, "the access key ID you provided does not exist in our records")
	}
	return secret, nil
}

func (v *Verifier) now() time.Time {
	if v.Now != nil {
		return v.Now()
	}
	return time.Now()
}

func (v *Verifier) maxSkew() time.Duration {
	if v.MaxSkew > 0 {
		return v.MaxSkew
	}
	return 15 * time.Minute
}

func (v *Verifier) maxBuffered() int64 {
	if v.MaxBufferedBody > 0 {
		return v.MaxBufferedBody
	}
	return 32 << 20
}

// readBody reads the whole body, up to MaxBufferedBody, and returns it
// with its SHA-256. It hashes as it reads, so that for a large body the
// hashing overlaps the client's sending instead of following it.
func (v *Verifier) readBody(r *http.Request) ([]byte, [sha256.Size]byte, *Error) {
	var sum [sha256.Size]byte
	limit := v.maxBuffered()
	if r.Body == nil || r.Body == http.NoBody {
		return nil, sha256.Sum256(nil), nil
	}
	if r.ContentLength > limit {
		return nil, sum, errorf(BodyTooLarge, "the request body is larger than the limit")
	}
	h := sha256.New()
	if n := r.ContentLength; n > 0 {
		// One allocation of the right size: io.ReadAll would grow (and
		// zero and copy) its way up, which costs more than the hash for
		// megabyte bodies. net/http ends the body at Content-Length.
		b := make([]byte, n)
		off := 0
		for off < len(b) {
			m, err := r.Body.Read(b[off:])
			h.Write(b[off : off+m])
			off += m
			if err == io.EOF {
				break // a short body: its signature does not match
			}
			if err != nil {
				return nil, sum, &Error{Kind: Internal, Msg: "reading the request body failed", cause: err}
			}
		}
		h.Sum(sum[:0])
		return b[:off], sum, nil
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return nil, sum, errorf(BodyTooLarge, "the request body is larger than the limit")
		}
		return nil, sum, &Error{Kind: Internal, Msg: "reading the request body failed", cause: err}
	}
	if int64(len(b)) > limit {
		return nil, sum, errorf(BodyTooLarge, "the request body is larger than the limit")
	}
	return b, sha256.Sum256(b), nil
}

func buildCanonicalRequest(r *http.Request, uri string, ps []param, presigned bool, cred *credential, payloadHash string) []byte {
	b := make([]byte, 0, 512)
	b = append(b, r.Method...)
	b = append(b, '\n')
	b = append(b, uri...)
	b = append(b, '\n')
	b = appendCanonicalQuery(b, ps, presigned)
	b = append(b, '\n')
	b = appendCanonicalHeaders(b, r, cred.signedHeaders)
	b = append(b, '\n')
	b = append(b, cred.signedHeadersRaw...)
	b = append(b, '\n')
	return append(b, payloadHash...)
}

// checkAmzHeadersSigned enforces S3's rule that every x-amz-* header is
// signed. Without it, whoever holds a presigned PUT URL could add, say,
// x-amz-copy-source or x-amz-acl. x-amz-content-sha256 is exempt: with
// header authentication it is part of the canonical request anyway.
func checkAmzHeadersSigned(r *http.Request, cred *credential) *Error {
	for k := range r.Header {
		if len(k) < 6 || !strings.EqualFold(k[:6], "x-amz-") {
			continue
		}
		lk := strings.ToLower(k)
		if lk == "x-amz-content-sha256" || cred.signs(lk) {
			continue
		}
		return errorf(BadSignature, "there were headers present in the request which were not signed: "+quoteShort(lk))
	}
	return nil
}

// checkRoutingHeadersSigned refuses a request to a service other than S3
// that carries X-Amz-Target or Content-Type without signing it. Those two
// choose what a signed body means: X-Amz-Target the operation of a JSON
// request (and, for "sagemaker", whether the runtime or the control plane
// serves it), Content-Type the parser. Unsigned, someone holding a copy
// of a signed request could replay its body as another operation within
// the clock-skew window. Every SDK and CLI signs both.
func checkRoutingHeadersSigned(r *http.Request, cred *credential) *Error {
	for _, h := range [...]string{"x-amz-target", "content-type"} {
		if _, present := r.Header[http.CanonicalHeaderKey(h)]; present && !cred.signs(h) {
			return errorf(BadSignature, "the "+h+" header must be signed (add it to SignedHeaders)")
		}
	}
	return nil
}

type payloadKind int

const (
	payloadHex payloadKind = iota
	payloadUnsigned
	payloadStreamingSigned
	payloadStreamingSignedTrailer
	payloadStreamingUnsignedTrailer
)

func classifyPayload(ph string) (payloadKind, *Error) {
	switch ph {
	case unsignedPayload:
		return payloadUnsigned, nil
	case streamingSignedPayload:
		return payloadStreamingSigned, nil
	case streamingSignedPayloadTrailer:
		return payloadStreamingSignedTrailer, nil
	case streamingUnsignedPayloadTrailer:
		return payloadStreamingUnsignedTrailer, nil
	}
	if len(ph) == 64 {
		if _, err := hex.DecodeString(ph); err == nil {
			return payloadHex, nil
		}
	}
	if strings.HasPrefix(ph, "STREAMING-") {
		return 0, errorf(UnsupportedAlgorithm, "x-amz-content-sha256 "+quoteShort(ph)+" is not supported")
	}
	return 0, errorf(Malformed, "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-*, or a hex SHA-256")
}

// hashEqual compares a hex hash from the client with a computed one.
func hashEqual(hexHash string, sum []byte) bool {
	var want [sha256.Size]byte
	if len(hexHash) != 2*len(want) {
		return false
	}
	if _, err := hex.Decode(want[:], []byte(hexHash)); err != nil {
		return false
	}
	return hmac.Equal(want[:], sum)
}

// headerChecksum returns the x-amz-checksum-* header of an S3 request whose
// value is a checksum of this request's body: not CompleteMultipartUpload's
// (POST ?uploadId=), which is the whole object's.
func headerChecksum(r *http.Request) (*checksum, *Error) {
	if r.Method == http.MethodPost && r.URL.Query().Has("uploadId") {
		return nil, nil
	}
	var ck *checksum
	for i := range checksumAlgos {
		a := &checksumAlgos[i]
		vals := r.Header.Values(a.header)
		if len(vals) == 0 {
			continue
		}
		if ck != nil || len(vals) > 1 {
			return nil, errorf(Malformed, "expecting a single x-amz-checksum- header")
		}
		ck = newChecksum(a)
		if !ck.setWant(strings.TrimSpace(vals[0])) {
			return nil, errorf(Malformed, "value for "+a.header+" header is invalid")
		}
	}
	return ck, nil
}

// bufferedBody is a body Verify has read; Close closes the original.
type bufferedBody struct {
	*bytes.Reader
	buf  []byte
	orig io.Closer
}

func (b bufferedBody) Close() error { return b.orig.Close() }

// Bytes returns the whole body without reading it, so that a handler that
// needs it in memory (the runtime router) does not copy it again. The
// caller must not modify it.
func (b bufferedBody) Bytes() []byte { return b.buf }

// verifyingBody passes a body through, hashing it, and at io.EOF compares
// the SHA-256 with x-amz-content-sha256 and the checksum with its header.
type verifyingBody struct {
	src     io.ReadCloser
	res     *Result
	sha     hash.Hash
	wantSHA string
	ck      *checksum
	err     error
}

func (b *verifyingBody) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	n, err := b.src.Read(p)
	if b.sha != nil {
		b.sha.Write(p[:n])
	}
	if b.ck != nil {
		b.ck.h.Write(p[:n])
	}
	if err == io.EOF {
		err = b.finish()
	}
	if err != nil {
		b.err = err
	}
	return n, err
}

func (b *verifyingBody) finish() error {
	if b.sha != nil && !hashEqual(b.wantSHA, b.sha.Sum(nil)) {
		return errorf(PayloadHashMismatch, "the provided x-amz-content-sha256 does not match what was computed")
	}
	if b.ck != nil {
		v, err := b.ck.verify()
		if err != nil {
			return err
		}
		b.res.checksumValue = v
	}
	return io.EOF
}

func (b *verifyingBody) Close() error { return b.src.Close() }
