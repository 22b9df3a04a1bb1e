package sigv4

import (
	"net/http"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
)

// requestTarget returns the path and raw query exactly as they came on the
// wire. A server request keeps them in RequestURI (for HTTP/2, :path); a
// request built in-process has only URL.
func requestTarget(r *http.Request) (path, rawQuery string) {
	u := r.RequestURI
	if u == "" || u == "*" {
		path = r.URL.EscapedPath()
		if path == "" {
			path = "/"
		}
		return path, r.URL.RawQuery
	}
	u, rawQuery, _ = strings.Cut(u, "?")
	if u != "" && u[0] != '/' {
		// absolute-form: scheme://authority/path
		if _, rest, ok := strings.Cut(u, "://"); ok {
			if i := strings.IndexByte(rest, '/'); i >= 0 {
				u = rest[i:]
			} else {
				u = ""
			}
		}
	}
	if u == "" {
		u = "/"
	}
	return u, rawQuery
}

// canonicalURIs returns the canonical URI candidates for the wire path.
//
// S3 signs the path exactly as sent (aws-sdk-go-v2 sets
// DisableURIPathEscaping for S3; botocore's S3SigV4Auth does not normalise).
// Every other service signs the sent, already escaped, path escaped once
// more. aws-sdk-go-v2 escapes it as is; botocore first removes "." and ".."
// segments and empty segments (as the SigV4 spec asks). The second form is
// returned only when it differs, so a typical request is hashed once.
func canonicalURIs(service, wirePath string) []string {
	if service == "s3" {
		return []string{wirePath}
	}
	first := string(appendURIEncode(make([]byte, 0, len(wirePath)+16), wirePath, false))
	if norm := removeDotSegments(wirePath); norm != wirePath {
		if second := string(appendURIEncode(nil, norm, false)); second != first {
			return []string{first, second}
		}
	}
	return []string{first}
}

// removeDotSegments is botocore's normalize_url_path: RFC 3986 dot-segment
// removal that also drops empty segments, keeping a leading and trailing "/".
func removeDotSegments(p string) string {
	if p == "" {
		return "/"
	}
	var out []string
	for seg := range strings.SplitSeq(p, "/") {
		switch seg {
		case "", ".":
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
		default:
			out = append(out, seg)
		}
	}
	var b strings.Builder
	if p[0] == '/' {
		b.WriteByte('/')
	}
	b.WriteString(strings.Join(out, "/"))
	if p[len(p)-1] == '/' && len(out) > 0 {
		b.WriteByte('/')
	}
	return b.String()
}

// appendURIEncode appends s percent-encoded as SigV4 requires: every byte
// outside the RFC 3986 unreserved set (A-Z a-z 0-9 - _ . ~) becomes %XX with
// upper-case hex; "/" is kept unless encodeSlash.
func appendURIEncode(b []byte, s string, encodeSlash bool) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if isUnreserved(c) || (c == '/' && !encodeSlash) {
			b = append(b, c)
			continue
		}
		b = append(b, '%', upperHex[c>>4], upperHex[c&15])
	}
	return b
}

const upperHex = "0123456789ABCDEF"

func isUnreserved(c byte) bool {
	return 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' ||
		c == '-' || c == '_' || c == '.' || c == '~'
}

// appendCanonicalQuery appends the canonical query string: every parameter
// (but X-Amz-Signature when presigned), name and value URI-encoded, sorted
// by encoded name and then encoded value — after encoding, as the spec and
// aws-sdk-go-v2 do, because encoding does not preserve order.
func appendCanonicalQuery(b []byte, ps []param, presigned bool) []byte {
	if len(ps) == 0 {
		return b
	}
	enc := make([]param, 0, len(ps))
	for _, p := range ps {
		if presigned && p.key == "X-Amz-Signature" {
			continue
		}
		enc = append(enc, param{
			key:   encodeQueryComponent(p.key),
			value: encodeQueryComponent(p.value),
		})
	}
	slices.SortFunc(enc, func(x, y param) int {
		if c := strings.Compare(x.key, y.key); c != 0 {
			return c
		}
		return strings.Compare(x.value, y.value)
	})
	for i, p := range enc {
		if i > 0 {
			b = append(b, '&')
		}
		b = append(b, p.key...)
		b = append(b, '=')
		b = append(b, p.value...)
	}
	return b
}

func encodeQueryComponent(s string) string {
	for i := 0; i < len(s); i++ {
		if !isUnreserved(s[i]) {
			return string(appendURIEncode(make([]byte, 0, len(s)+8), s, true))
		}
	}
	return s
}

// appendCanonicalHeaders appends "name:value\n" for each signed header, in
// the order of SignedHeaders. Values are trimmed and runs of spaces
// collapsed; repeated headers are joined with ",".
func appendCanonicalHeaders(b []byte, r *http.Request, signed []string) []byte {
	for _, name := range signed {
		b = append(b, name...)
		b = append(b, ':')
		for i, v := range headerValues(r, name) {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendTrimmed(b, v)
		}
		b = append(b, '\n')
	}
	return b
}

// headerValues returns the values of a signed header. Go's server moves some
// headers out of r.Header: Host into r.Host (HTTP/2's :authority too), and
// Content-Length and Transfer-Encoding in some cases into r.ContentLength
// and r.TransferEncoding; those are read back from there.
func headerValues(r *http.Request, name string) []string {
	switch name {
	case "host", ":authority":
		host := r.Host
		if host == "" {
			host = r.URL.Host
		}
		return []string{host}
	case "content-length":
		if v := r.Header["Content-Length"]; len(v) > 0 {
			return v
		}
		if r.ContentLength >= 0 {
			return []string{strconv.FormatInt(r.ContentLength, 10)}
		}
		return nil
	case "transfer-encoding":
		if v := r.Header["Transfer-Encoding"]; len(v) > 0 {
			return v
		}
		if len(r.TransferEncoding) > 0 {
			return []string{strings.Join(r.TransferEncoding, ",")}
		}
		return nil
	}
	if v, ok := r.Header[name]; ok { // a map built by hand, not canonicalised
		return v
	}
	return r.Header[textproto.CanonicalMIMEHeaderKey(name)]
}

// appendTrimmed appends v without leading and trailing spaces and with each
// run of spaces collapsed to one, as aws-sdk-go-v2 and the spec do.
func appendTrimmed(b []byte, v string) []byte {
	v = strings.Trim(v, " \t")
	space := false
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c == ' ' {
			if !space {
				b = append(b, ' ')
			}
			space = true
			continue
		}
		space = false
		b = append(b, c)
	}
	return b
}
