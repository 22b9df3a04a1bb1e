package objectstore

import (
	"bytes"
	"encoding/xml"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"

	"convoy/internal/awsproto"
	"convoy/internal/iam"
	"convoy/internal/policy"
	"convoy/internal/sigv4"
)

// Namespace is the XML namespace of S3 responses.
const Namespace = "http://s3.amazonaws.com/doc/2006-03-01/"

const (
	maxKeyBytes     = 1024
	maxXMLBody      = 1 << 20
	maxObjectSize   = 5 << 40 // 5 TiB, as S3
	maxPutSize      = 5 << 30 // single PUT and part limit, as S3
	minPartSize     = 5 << 20
	maxPartNumber   = 10000
	defaultMaxKeys  = 1000
	defaultKMSAlias = "alias/aws/s3"
)

// unsupported subresources: answered with NotImplemented rather than being
// mistaken for the plain operation on the same path.
var unsupported = []string{"acl", "tagging", "cors", "lifecycle", "logging", "notification", "replication",
	"website", "versions", "object-lock", "retention", "legal-hold", "ownershipControls", "publicAccessBlock",
	"accelerate", "requestPayment", "analytics", "inventory", "metrics", "intelligent-tiering", "torrent",
	"restore", "select", "attributes", "policyStatus"}

// request is one S3 call being served.
type request struct {
	w      http.ResponseWriter
	r      *http.Request
	p      *iam.Principal
	bucket string
	key    string
	q      map[string][]string
}

func (c *request) has(name string) bool { _, ok := c.q[name]; return ok }

func (c *request) get(name string) string {
	if v := c.q[name]; len(v) > 0 {
		return v[0]
	}
	return ""
}

func s3err(status int, code, format string, args ...any) *awsproto.Error {
	return awsproto.Errorf(status, code, format, args...)
}

var (
	errNoSuchBucket = func(b string) *awsproto.Error {
		return s3err(http.StatusNotFound, "NoSuchBucket", "The specified bucket does not exist: %s", b)
	}
	errNoSuchKey = func(k string) *awsproto.Error {
		return s3err(http.StatusNotFound, "NoSuchKey", "The specified key does not exist: %s", k)
	}
)

// ServeHTTP implements http.Handler for the S3 API.
func (s *Store) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c := &request{w: w, r: r, p: iam.PrincipalFrom(r.Context()), q: r.URL.Query()}
	c.bucket, c.key = s.split(r)
	if err := s.serve(c); err != nil {
		s.writeError(c, err)
	}
}

func (s *Store) writeError(c *request, err error) {
	var ae *awsproto.Error
	var se *sigv4.Error
	switch {
	case errors.As(err, &ae):
	case errors.As(err, &se):
		// A body that failed verification while being read.
		ae = awsproto.Errorf(se.Status("s3"), se.Code("s3"), "%s", se.Msg)
	case errors.Is(err, io.ErrUnexpectedEOF):
		ae = s3err(http.StatusBadRequest, "IncompleteBody", "You did not provide the number of bytes specified by the Content-Length HTTP header.")
	default:
		s.log.Error("s3 request failed", "err", err, "request_id", awsproto.RequestID(c.r.Context()), "bucket", c.bucket)
		ae = s3err(http.StatusInternalServerError, "InternalError", "We encountered an internal error. Please try again. (request ID %s)", awsproto.RequestID(c.r.Context()))
	}
	awsproto.WriteError(c.w, c.r, awsproto.RestXML, ae)
}

// split finds the bucket and key, path-style or virtual-host style.
func (s *Store) split(r *http.Request) (bucket, key string) {
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	path := strings.TrimPrefix(r.URL.Path, "/")
	if net.ParseIP(host) == nil {
		for _, vh := range s.cfg.VirtualHosts {
			if b, ok := strings.CutSuffix(strings.ToLower(host), "."+strings.ToLower(vh)); ok && b != "" {
				return b, path
			}
		}
	}
	bucket, key, _ = strings.Cut(path, "/")
	return bucket, key
}

func (s *Store) serve(c *request) error {
	for _, sub := range unsupported {
		if c.has(sub) {
			return s3err(http.StatusNotImplemented, "NotImplemented", "the %s subresource is not supported by convoy", sub)
		}
	}
	m := c.r.Method
	if c.bucket == "" {
		if m == http.MethodGet {
			return s.listBuckets(c)
		}
		return s3err(http.StatusMethodNotAllowed, "MethodNotAllowed", "%s is not allowed on the service", m)
	}
	if c.key == "" {
		switch {
		case m == http.MethodPut && c.has("encryption"):
			return s.putBucketEncryption(c)
		case m == http.MethodPut && c.has("policy"):
			return s.putBucketPolicy(c)
		case m == http.MethodPut && c.has("versioning"):
			return s3err(http.StatusNotImplemented, "NotImplemented", "bucket versioning is not supported by convoy")
		case m == http.MethodPut:
			return s.createBucket(c)
		case m == http.MethodGet && c.has("encryption"):
			return s.getBucketEncryption(c)
		case m == http.MethodGet && c.has("policy"):
			return s.getBucketPolicy(c)
		case m == http.MethodGet && c.has("location"):
			return s.getBucketLocation(c)
		case m == http.MethodGet && c.has("versioning"):
			return s.getBucketVersioning(c)
		case m == http.MethodGet && c.has("uploads"):
			return s.listUploads(c)
		case m == http.MethodGet:
			return s.listObjects(c)
		case m == http.MethodHead:
			return s.headBucket(c)
		case m == http.MethodDelete && c.has("encryption"):
			return s.deleteBucketEncryption(c)
		case m == http.MethodDelete && c.has("policy"):
			return s.deleteBucketPolicy(c)
		case m == http.MethodDelete:
			return s.deleteBucket(c)
		case m == http.MethodPost && c.has("delete"):
			return s.deleteObjects(c)
		}
		return s3err(http.StatusMethodNotAllowed, "MethodNotAllowed", "%s is not allowed on a bucket", m)
	}
	if err := checkKey(c.key); err != nil {
		return err
	}
	switch {
	case m == http.MethodPut && c.has("uploadId"):
		if c.r.Header.Get("X-Amz-Copy-Source") != "" {
			return s3err(http.StatusNotImplemented, "NotImplemented", "UploadPartCopy is not supported by convoy")
		}
		return s.uploadPart(c)
	case m == http.MethodPut && c.r.Header.Get("X-Amz-Copy-Source") != "":
		return s.copyObject(c)
	case m == http.MethodPut:
		return s.putObject(c)
	case m == http.MethodGet && c.has("uploadId"):
		return s.listParts(c)
	case m == http.MethodGet:
		return s.getObject(c, false)
	case m == http.MethodHead:
		return s.getObject(c, true)
	case m == http.MethodDelete && c.has("uploadId"):
		return s.abortUpload(c)
	case m == http.MethodDelete:
		return s.deleteObject(c)
	case m == http.MethodPost && c.has("uploads"):
		return s.createUpload(c)
	case m == http.MethodPost && c.has("uploadId"):
		return s.completeUpload(c)
	}
	return s3err(http.StatusMethodNotAllowed, "MethodNotAllowed", "%s is not allowed on an object", m)
}

// checkKey refuses keys S3 refuses (too long, not UTF-8) and, unlike S3,
// keys with "." or ".." segments: convoy materialises keys as file paths
// inside training containers, where such a key would escape its directory.
func checkKey(key string) error {
	if len(key) > maxKeyBytes {
		return s3err(http.StatusBadRequest, "KeyTooLongError", "Your key is too long: %d bytes, at most %d", len(key), maxKeyBytes)
	}
	if !utf8.ValidString(key) {
		return s3err(http.StatusBadRequest, "InvalidArgument", "object keys must be valid UTF-8")
	}
	if isDotSegment(key) || strings.ContainsRune(key, 0) {
		return s3err(http.StatusBadRequest, "InvalidArgument", "object key %q has a '.' or '..' path segment or a NUL byte; convoy refuses such keys", key)
	}
	return nil
}

// authorize checks action on resource with the caller's identity policies
// and the bucket policy, as S3 does within one account: an explicit deny
// in either wins; an identity allow suffices; a bucket policy allow
// suffices only when it names the caller (or its role, within its session
// policy), not when it names just the account, which hands the decision
// to the caller's own policies (iam.Store.ResourcePolicyGrants).
func (s *Store) authorize(c *request, action, resource string, cond map[string][]string) error {
	ctx := c.r.Context()
	if c.p == nil {
		return s3err(http.StatusForbidden, "AccessDenied", "Access Denied")
	}
	identity, why, err := s.cfg.IAM.Decide(ctx, c.p, action, resource, cond)
	if err != nil {
		return err
	}
	bucketDecision, bucketGrants := policy.ImplicitDeny, false
	if c.bucket != "" && identity != policy.ExplicitDeny {
		var doc string
		s.db.QueryRowContext(ctx, `SELECT policy FROM s3_buckets WHERE name = ?`, c.bucket).Scan(&doc)
		if doc != "" {
			if bp, err := policy.Parse(doc); err == nil {
				ctxKeys := s.cfg.IAM.RequestContext(c.p)
				for k, v := range cond {
					ctxKeys[k] = v
				}
				req := policy.Request{Action: action, Resource: resource,
					Principal: c.p.ARN, PrincipalAccount: c.p.AccountID, Context: ctxKeys}
				bucketDecision = policy.Evaluate([]*policy.Document{bp}, req)
				bucketGrants = bucketDecision == policy.Allow && s.cfg.IAM.ResourcePolicyGrants(bp, req, c.p)
			}
		}
	}
	switch {
	case identity == policy.ExplicitDeny || bucketDecision == policy.ExplicitDeny:
		if bucketDecision == policy.ExplicitDeny {
			why = "of an explicit deny in the bucket policy"
		}
	case identity == policy.Allow || bucketGrants:
		return nil
	}
	return s3err(http.StatusForbidden, "AccessDenied", "User: %s is not authorized to perform: %s on resource: %s because %s", c.p.ARN, action, resource, why)
}

// readXML reads a bounded XML request body into v.
func readXML(c *request, v any) error {
	body, err := io.ReadAll(io.LimitReader(c.r.Body, maxXMLBody+1))
	if err != nil {
		return err
	}
	if len(body) > maxXMLBody {
		return s3err(http.StatusBadRequest, "MalformedXML", "the XML body is larger than %d bytes", maxXMLBody)
	}
	if err := xml.Unmarshal(body, v); err != nil {
		return s3err(http.StatusBadRequest, "MalformedXML", "The XML you provided was not well-formed or did not validate against our published schema: %v", err)
	}
	return nil
}

// writeXML writes an S3 XML response.
func writeXML(c *request, status int, v any) error {
	var buf bytes.Buffer
	buf.WriteString(xml.Header)
	if err := xml.NewEncoder(&buf).Encode(v); err != nil {
		return err
	}
	c.w.Header().Set("Content-Type", "application/xml")
	c.w.Header().Set("Content-Length", strconv.Itoa(buf.Len()))
	c.w.WriteHeader(status)
	_, err := c.w.Write(buf.Bytes())
	return err
}
