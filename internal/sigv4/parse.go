package sigv4

import (
	"encoding/hex"
	"net/url"
	"strings"
	"time"
)

const (
	algorithm   = "AWS4-HMAC-SHA256"
	terminator  = "aws4_request"
	amzDateForm = "20060102T150405Z"
)

// credential is the parsed Authorization header or presign query: who
// signed, for which scope, over which headers, with which signature.
type credential struct {
	accessKeyID string
	date        string // yyyymmdd of the scope
	region      string
	service     string
	scope       string // date/region/service/aws4_request

	signedHeaders    []string
	signedHeadersRaw string
	signature        [32]byte
}

// parseAuthorization parses the value of an Authorization header:
//
//	AWS4-HMAC-SHA256 Credential=AKID/20261125/us-east-1/sts/aws4_request, SignedHeaders=host;x-amz-date, Signature=<64 hex>
//
// The three components may come in any order, with or without spaces after
// the commas; each must appear exactly once.
func parseAuthorization(h string) (credential, *Error) {
	var c credential
	rest, ok := strings.CutPrefix(h, algorithm)
	if !ok || rest == "" || (rest[0] != ' ' && rest[0] != '\t') {
		alg, _, _ := strings.Cut(h, " ")
		return c, errorf(UnsupportedAlgorithm, "the authorization mechanism "+quoteShort(alg)+" is not supported; use AWS4-HMAC-SHA256")
	}
	var cred, signed, sig string
	var seen [3]bool
	for part := range strings.SplitSeq(rest, ",") {
		part = strings.Trim(part, " \t")
		name, value, ok := strings.Cut(part, "=")
		if !ok {
			return c, errorf(Malformed, "authorization header component "+quoteShort(part)+" is not name=value")
		}
		var i int
		switch name {
		case "Credential":
			i, cred = 0, value
		case "SignedHeaders":
			i, signed = 1, value
		case "Signature":
			i, sig = 2, value
		default:
			return c, errorf(Malformed, "authorization header has an unknown component "+quoteShort(name))
		}
		if seen[i] {
			return c, errorf(Malformed, "authorization header repeats "+name)
		}
		seen[i] = true
	}
	for i, name := range [3]string{"Credential", "SignedHeaders", "Signature"} {
		if !seen[i] {
			return c, errorf(Malformed, "authorization header is missing "+name)
		}
	}
	if err := c.parse(cred, signed, sig); err != nil {
		return c, err
	}
	return c, nil
}

// parse fills c from the three components, shared by header and query
// authentication.
func (c *credential) parse(cred, signed, sig string) *Error {
	parts := strings.Split(cred, "/")
	if len(parts) != 5 {
		return errorf(Malformed, "credential "+quoteShort(cred)+" is not AKID/date/region/service/aws4_request")
	}
	c.accessKeyID, c.date, c.region, c.service = parts[0], parts[1], parts[2], parts[3]
	switch {
	case c.accessKeyID == "":
		return errorf(Malformed, "credential has an empty access key ID")
	case !isDate(c.date):
		return errorf(Malformed, "credential date "+quoteShort(c.date)+" is not yyyymmdd")
	case c.region == "":
		return errorf(Malformed, "credential has an empty region")
	case c.service == "":
		return errorf(Malformed, "credential has an empty service")
	case parts[4] != terminator:
		return errorf(Malformed, "credential must end in aws4_request, not "+quoteShort(parts[4]))
	}
	c.scope = cred[len(c.accessKeyID)+1:]

	if signed == "" {
		return errorf(Malformed, "SignedHeaders is empty")
	}
	c.signedHeadersRaw = signed
	c.signedHeaders = strings.Split(signed, ";")
	for i, name := range c.signedHeaders {
		if !isHeaderName(name) {
			return errorf(Malformed, "SignedHeaders has an invalid name "+quoteShort(name))
		}
		for _, prev := range c.signedHeaders[:i] {
			if prev == name {
				return errorf(Malformed, "SignedHeaders repeats "+quoteShort(name))
			}
		}
	}
	if !c.signs("host") && !c.signs(":authority") {
		return errorf(Malformed, "SignedHeaders must include host")
	}

	if len(sig) != 64 {
		return errorf(Malformed, "signature must be 64 hex digits")
	}
	if _, err := hex.Decode(c.signature[:], []byte(sig)); err != nil {
		return errorf(Malformed, "signature must be 64 hex digits")
	}
	return nil
}

func (c *credential) signs(name string) bool {
	for _, h := range c.signedHeaders {
		if h == name {
			return true
		}
	}
	return false
}

// isHeaderName reports whether s is a lower-case HTTP token, or the HTTP/2
// pseudo-header ":authority" some signers use instead of host.
func isHeaderName(s string) bool {
	if s == ":authority" {
		return true
	}
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

func isDate(s string) bool {
	if len(s) != 8 {
		return false
	}
	_, err := time.Parse("20060102", s)
	return err == nil
}

// parseAmzDate parses an X-Amz-Date value (ISO 8601 basic, UTC).
func parseAmzDate(s string) (time.Time, bool) {
	if len(s) != len(amzDateForm) {
		return time.Time{}, false
	}
	t, err := time.Parse(amzDateForm, s)
	return t, err == nil
}

// param is one decoded query parameter, in wire order.
type param struct{ key, value string }

// parseQuery decodes a raw query string the way the SDKs' signers read it
// (url.ParseQuery, '+' as space), keeping order and repeats. Empty pieces
// between '&' are skipped; an invalid escape is an error, not a silent drop,
// because the client cannot have signed what we would compute.
func parseQuery(raw string) ([]param, *Error) {
	if raw == "" {
		return nil, nil
	}
	ps := make([]param, 0, strings.Count(raw, "&")+1)
	for piece := range strings.SplitSeq(raw, "&") {
		if piece == "" {
			continue
		}
		k, v, _ := strings.Cut(piece, "=")
		dk, err1 := url.QueryUnescape(k)
		dv, err2 := url.QueryUnescape(v)
		if err1 != nil || err2 != nil {
			return nil, errorf(Malformed, "query parameter "+quoteShort(piece)+" is not validly escaped")
		}
		ps = append(ps, param{dk, dv})
	}
	return ps, nil
}

// presignParams are the X-Amz-* query parameters of a presigned URL.
var presignParams = [...]string{
	"X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires",
	"X-Amz-SignedHeaders", "X-Amz-Signature", "X-Amz-Security-Token",
}

// presignQuery is what a presigned URL's query says about its signature.
type presignQuery struct {
	cred    credential
	amzDate string
	expires time.Duration // 0 if X-Amz-Expires is absent
	token   string
	// payloadHash is X-Amz-Content-Sha256 from the query, "" if absent.
	payloadHash string
}

// parsePresign parses the presign parameters of a query that has
// X-Amz-Algorithm. Each must appear at most once.
func parsePresign(ps []param) (presignQuery, *Error) {
	var q presignQuery
	var vals [len(presignParams)]string
	var seen [len(presignParams)]bool
	for _, p := range ps {
		if p.key == "X-Amz-Content-Sha256" {
			q.payloadHash = p.value
			continue
		}
		for i, name := range presignParams {
			if p.key == name {
				if seen[i] {
					return q, errorf(Malformed, "query repeats "+name)
				}
				seen[i], vals[i] = true, p.value
			}
		}
	}
	if vals[0] != algorithm {
		return q, errorf(UnsupportedAlgorithm, "X-Amz-Algorithm "+quoteShort(vals[0])+" is not supported; use AWS4-HMAC-SHA256")
	}
	for _, i := range []int{1, 2, 4, 5} {
		if !seen[i] {
			return q, errorf(Malformed, "query is missing "+presignParams[i])
		}
	}
	if seen[3] {
		n, ok := atoiBounded(vals[3], 604800)
		if !ok || n < 1 {
			return q, errorf(Malformed, "X-Amz-Expires must be an integer from 1 to 604800")
		}
		q.expires = time.Duration(n) * time.Second
	}
	if err := q.cred.parse(vals[1], vals[4], vals[5]); err != nil {
		return q, err
	}
	q.amzDate = vals[2]
	q.token = vals[6]
	return q, nil
}

// atoiBounded parses a decimal integer in [0, max] without overflow.
func atoiBounded(s string, max int64) (int64, bool) {
	if s == "" || len(s) > 19 {
		return 0, false
	}
	var n int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
		if n > max {
			return 0, false
		}
	}
	return n, true
}

// quoteShort quotes s for an error message, cut to a length that keeps
// messages (and logs) small whatever a client sends.
func quoteShort(s string) string {
	const max = 64
	if len(s) > max {
		s = s[:max] + "..."
	}
	b := make([]byte, 0, len(s)+2)
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			b = append(b, '\\', 'x', hexDigits[c>>4], hexDigits[c&15])
			continue
		}
		b = append(b, c)
	}
	return string(append(b, '"'))
}

const hexDigits = "0123456789abcdef"
