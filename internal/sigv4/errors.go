package sigv4

import (
	"net/http"
	"strconv"
)

// Kind classifies a verification failure. The server maps a Kind to the
// error code of the protocol it answers in (see Error.Code).
type Kind int

// The kinds of verification failure. The zero Kind is not used.
const (
	// MissingAuth: the request carries no SigV4 authentication at all.
	MissingAuth Kind = iota + 1
	// Malformed: the Authorization header or the presign query parameters
	// are incomplete or malformed (AWS: IncompleteSignature,
	// AuthorizationHeaderMalformed, AuthorizationQueryParametersError).
	Malformed
	// UnknownAccessKey: Lookup does not know the access key ID.
	UnknownAccessKey
	// BadSignature: the request, chunk or trailer signature does not match.
	BadSignature
	// Skewed: the request time is outside the allowed clock skew.
	Skewed
	// PresignExpired: the presigned URL's X-Amz-Expires has passed.
	PresignExpired
	// ExpiredToken: the session token has expired.
	ExpiredToken
	// InvalidToken: the session token is not valid for the access key.
	InvalidToken
	// PayloadHashMismatch: the body does not hash to x-amz-content-sha256.
	PayloadHashMismatch
	// ChecksumMismatch: the body does not match its x-amz-checksum-* header
	// or trailer.
	ChecksumMismatch
	// BadChunk: the aws-chunked body is malformed, or its decoded length
	// differs from x-amz-decoded-content-length.
	BadChunk
	// BodyTooLarge: a body that has to be buffered exceeds
	// Verifier.MaxBufferedBody.
	BodyTooLarge
	// UnsupportedAlgorithm: the request is signed with something other than
	// AWS4-HMAC-SHA256 (SigV2, SigV4a, signed event streams).
	UnsupportedAlgorithm
	// Internal: Lookup failed for a reason that is not the client's fault;
	// the cause is available through errors.Unwrap.
	Internal
)

var kindNames = [...]string{
	MissingAuth:          "MissingAuth",
	Malformed:            "Malformed",
	UnknownAccessKey:     "UnknownAccessKey",
	BadSignature:         "BadSignature",
	Skewed:               "Skewed",
	PresignExpired:       "PresignExpired",
	ExpiredToken:         "ExpiredToken",
	InvalidToken:         "InvalidToken",
	PayloadHashMismatch:  "PayloadHashMismatch",
	ChecksumMismatch:     "ChecksumMismatch",
	BadChunk:             "BadChunk",
	BodyTooLarge:         "BodyTooLarge",
	UnsupportedAlgorithm: "UnsupportedAlgorithm",
	Internal:             "Internal",
}

func (k Kind) String() string {
	if k > 0 && int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// Error is a verification failure. Msg is safe to show to the client: it
// never contains a secret or a signature this package computed.
type Error struct {
	Kind Kind
	Msg  string

	presigned bool   // the request used query (presigned) authentication
	cause     error  // for Internal
	canonical string // for BadSignature of a request
}

func (e *Error) Error() string { return "sigv4: " + e.Kind.String() + ": " + e.Msg }

// CanonicalRequest returns, for a request whose signature did not match,
// the canonical request the signature was checked against (S3 returns it in
// its SignatureDoesNotMatch error to help clients debug); "" otherwise. It
// holds the signed header values, X-Amz-Security-Token among them: return it
// to the client if you like, but do not log it.
func (e *Error) CanonicalRequest() string { return e.canonical }

// Unwrap returns the cause of an Internal error.
func (e *Error) Unwrap() error { return e.cause }

func errorf(k Kind, msg string) *Error { return &Error{Kind: k, Msg: msg} }

// protocol classes of Code and Status.
const (
	restXML = iota // s3
	query          // iam, sts
	jsonRPC        // kms, sagemaker and, by default, anything else
)

type awsCode struct {
	code   string
	status int
}

// codes holds, per protocol class, what AWS itself answers for each Kind.
var codes = [3][]awsCode{
	restXML: {
		MissingAuth:          {"AccessDenied", http.StatusForbidden},
		Malformed:            {"AuthorizationHeaderMalformed", http.StatusBadRequest},
		UnknownAccessKey:     {"InvalidAccessKeyId", http.StatusForbidden},
		BadSignature:         {"SignatureDoesNotMatch", http.StatusForbidden},
		Skewed:               {"RequestTimeTooSkewed", http.StatusForbidden},
		PresignExpired:       {"AccessDenied", http.StatusForbidden},
		ExpiredToken:         {"ExpiredToken", http.StatusBadRequest},
		InvalidToken:         {"InvalidToken", http.StatusBadRequest},
		PayloadHashMismatch:  {"XAmzContentSHA256Mismatch", http.StatusBadRequest},
		ChecksumMismatch:     {"BadDigest", http.StatusBadRequest},
		BadChunk:             {"InvalidRequest", http.StatusBadRequest},
		BodyTooLarge:         {"EntityTooLarge", http.StatusBadRequest},
		UnsupportedAlgorithm: {"InvalidRequest", http.StatusBadRequest},
		Internal:             {"InternalError", http.StatusInternalServerError},
	},
	query: {
		MissingAuth:          {"MissingAuthenticationToken", http.StatusForbidden},
		Malformed:            {"IncompleteSignature", http.StatusBadRequest},
		UnknownAccessKey:     {"InvalidClientTokenId", http.StatusForbidden},
		BadSignature:         {"SignatureDoesNotMatch", http.StatusForbidden},
		Skewed:               {"RequestTimeTooSkewed", http.StatusForbidden},
		PresignExpired:       {"RequestExpired", http.StatusForbidden},
		ExpiredToken:         {"ExpiredToken", http.StatusForbidden},
		InvalidToken:         {"InvalidClientTokenId", http.StatusForbidden},
		PayloadHashMismatch:  {"SignatureDoesNotMatch", http.StatusForbidden},
		ChecksumMismatch:     {"InvalidRequest", http.StatusBadRequest},
		BadChunk:             {"InvalidRequest", http.StatusBadRequest},
		BodyTooLarge:         {"RequestEntityTooLarge", http.StatusRequestEntityTooLarge},
		UnsupportedAlgorithm: {"IncompleteSignature", http.StatusBadRequest},
		Internal:             {"InternalFailure", http.StatusInternalServerError},
	},
	jsonRPC: {
		MissingAuth:          {"MissingAuthenticationTokenException", http.StatusBadRequest},
		Malformed:            {"IncompleteSignatureException", http.StatusBadRequest},
		UnknownAccessKey:     {"UnrecognizedClientException", http.StatusBadRequest},
		BadSignature:         {"InvalidSignatureException", http.StatusBadRequest},
		Skewed:               {"InvalidSignatureException", http.StatusBadRequest},
		PresignExpired:       {"InvalidSignatureException", http.StatusBadRequest},
		ExpiredToken:         {"ExpiredTokenException", http.StatusBadRequest},
		InvalidToken:         {"UnrecognizedClientException", http.StatusBadRequest},
		PayloadHashMismatch:  {"InvalidSignatureException", http.StatusBadRequest},
		ChecksumMismatch:     {"ValidationException", http.StatusBadRequest},
		BadChunk:             {"SerializationException", http.StatusBadRequest},
		BodyTooLarge:         {"RequestEntityTooLarge", http.StatusRequestEntityTooLarge},
		UnsupportedAlgorithm: {"IncompleteSignatureException", http.StatusBadRequest},
		Internal:             {"InternalFailure", http.StatusInternalServerError},
	},
}

func protocolClass(service string) int {
	switch service {
	case "s3":
		return restXML
	case "iam", "sts":
		return query
	}
	return jsonRPC
}

func (e *Error) lookup(service string) awsCode {
	class := protocolClass(service)
	if e.Kind <= 0 || int(e.Kind) >= len(codes[class]) {
		return codes[class][Internal]
	}
	c := codes[class][e.Kind]
	if class == restXML && e.Kind == Malformed && e.presigned {
		c.code = "AuthorizationQueryParametersError"
	}
	return c
}

// Code returns the AWS error code the service answers e with: "s3" speaks
// S3's REST-XML codes, "iam" and "sts" the query protocol's, and every other
// service (kms, sagemaker, ...) the JSON protocol's.
func (e *Error) Code(service string) string { return e.lookup(service).code }

// Status returns the HTTP status that goes with Code(service).
func (e *Error) Status(service string) int { return e.lookup(service).status }
