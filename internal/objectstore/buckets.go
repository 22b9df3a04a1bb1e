package objectstore

import (
	"database/sql"
	"encoding/base64"
	"encoding/xml"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"convoy/internal/awsproto"
	"convoy/internal/policy"
)

var bucketRE = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`)

func checkBucketName(name string) error {
	if !bucketRE.MatchString(name) || strings.Contains(name, "..") || net.ParseIP(name) != nil ||
		strings.HasPrefix(name, "xn--") || strings.HasSuffix(name, "-s3alias") {
		return s3err(http.StatusBadRequest, "InvalidBucketName", "The specified bucket is not valid: %q (3-63 lowercase letters, digits, dots and hyphens)", name)
	}
	return nil
}

type owner struct {
	ID          string
	DisplayName string
}

func (s *Store) owner() owner {
	return owner{ID: s.cfg.IAM.AccountID(), DisplayName: "convoy"}
}

func (s *Store) listBuckets(c *request) error {
	if err := s.authorize(c, "s3:ListAllMyBuckets", "*", nil); err != nil {
		return err
	}
	rows, err := s.db.QueryContext(c.r.Context(), `SELECT name, created FROM s3_buckets ORDER BY name`)
	if err != nil {
		return err
	}
	defer rows.Close()
	type bucketXML struct {
		Name         string
		CreationDate string
		BucketRegion string
	}
	var out struct {
		XMLName xml.Name    `xml:"ListAllMyBucketsResult"`
		Xmlns   string      `xml:"xmlns,attr"`
		Owner   owner       `xml:"Owner"`
		Buckets []bucketXML `xml:"Buckets>Bucket"`
	}
	out.Xmlns, out.Owner = Namespace, s.owner()
	for rows.Next() {
		var b bucketXML
		var created string
		if err := rows.Scan(&b.Name, &created); err != nil {
			return err
		}
		t, _ := time.Parse(timeLayout, created)
		b.CreationDate, b.BucketRegion = awsproto.Timestamp(t), s.cfg.Region
		out.Buckets = append(out.Buckets, b)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	return writeXML(c, http.StatusOK, out)
}

func (s *Store) createBucket(c *request) error {
	if err := checkBucketName(c.bucket); err != nil {
		return err
	}
	if err := s.authorize(c, "s3:CreateBucket", s.bucketARN(c.bucket), nil); err != nil {
		return err
	}
	if c.r.ContentLength != 0 {
		var cfg struct {
			LocationConstraint string
		}
		if err := readXML(c, &cfg); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if cfg.LocationConstraint != "" && cfg.LocationConstraint != s.cfg.Region {
			return s3err(http.StatusBadRequest, "IllegalLocationConstraintException",
				"The %s location constraint is incompatible for the region specific endpoint this request was sent to (%s).", cfg.LocationConstraint, s.cfg.Region)
		}
	}
	_, err := s.db.ExecContext(c.r.Context(), `INSERT INTO s3_buckets (name, created) VALUES (?, ?)`, c.bucket, now().Format(timeLayout))
	if err != nil && strings.Contains(err.Error(), "UNIQUE") {
		return s3err(http.StatusConflict, "BucketAlreadyOwnedByYou", "Your previous request to create the named bucket succeeded and you already own it.")
	}
	if err != nil {
		return err
	}
	c.w.Header().Set("Location", "/"+c.bucket)
	c.w.WriteHeader(http.StatusOK)
	return nil
}

func (s *Store) needBucket(c *request) error {
	ok, err := s.bucketExists(c.r.Context(), c.bucket)
	if err != nil {
		return err
	}
	if !ok {
		return errNoSuchBucket(c.bucket)
	}
	return nil
}

func (s *Store) headBucket(c *request) error {
	if err := s.authorize(c, "s3:ListBucket", s.bucketARN(c.bucket), nil); err != nil {
		return err
	}
	if err := s.needBucket(c); err != nil {
		return err
	}
	c.w.Header().Set("x-amz-bucket-region", s.cfg.Region)
	c.w.WriteHeader(http.StatusOK)
	return nil
}

func (s *Store) deleteBucket(c *request) error {
	if err := s.authorize(c, "s3:DeleteBucket", s.bucketARN(c.bucket), nil); err != nil {
		return err
	}
	err := s.db.Tx(c.r.Context(), func(tx *sql.Tx) error {
		var n int
		if err := tx.QueryRow(`SELECT COUNT(*) FROM s3_buckets WHERE name = ?`, c.bucket).Scan(&n); err != nil {
			return err
		}
		if n == 0 {
			return errNoSuchBucket(c.bucket)
		}
		if err := tx.QueryRow(`SELECT (SELECT COUNT(*) FROM s3_objects WHERE bucket = ?) + (SELECT COUNT(*) FROM s3_uploads WHERE bucket = ?)`,
			c.bucket, c.bucket).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return s3err(http.StatusConflict, "BucketNotEmpty", "The bucket you tried to delete is not empty")
		}
		_, err := tx.Exec(`DELETE FROM s3_buckets WHERE name = ?`, c.bucket)
		return err
	})
	if err != nil {
		return err
	}
	c.w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Store) getBucketLocation(c *request) error {
	if err := s.authorize(c, "s3:GetBucketLocation", s.bucketARN(c.bucket), nil); err != nil {
		return err
	}
	if err := s.needBucket(c); err != nil {
		return err
	}
	loc := s.cfg.Region
	if loc == "us-east-1" {
		loc = "" // as S3
	}
	return writeXML(c, http.StatusOK, struct {
		XMLName xml.Name `xml:"LocationConstraint"`
		Xmlns   string   `xml:"xmlns,attr"`
		Value   string   `xml:",chardata"`
	}{Xmlns: Namespace, Value: loc})
}

func (s *Store) getBucketVersioning(c *request) error {
	if err := s.authorize(c, "s3:GetBucketVersioning", s.bucketARN(c.bucket), nil); err != nil {
		return err
	}
	if err := s.needBucket(c); err != nil {
		return err
	}
	return writeXML(c, http.StatusOK, struct {
		XMLName xml.Name `xml:"VersioningConfiguration"`
		Xmlns   string   `xml:"xmlns,attr"`
	}{Xmlns: Namespace})
}

// ---- default encryption ----

type encryptionConfig struct {
	XMLName xml.Name `xml:"ServerSideEncryptionConfiguration"`
	Xmlns   string   `xml:"xmlns,attr,omitempty"`
	Rules   []struct {
		Default struct {
			SSEAlgorithm   string
			KMSMasterKeyID string `xml:",omitempty"`
		} `xml:"ApplyServerSideEncryptionByDefault"`
		BucketKeyEnabled bool `xml:",omitempty"`
	} `xml:"Rule"`
}

func (s *Store) putBucketEncryption(c *request) error {
	if err := s.authorize(c, "s3:PutEncryptionConfiguration", s.bucketARN(c.bucket), nil); err != nil {
		return err
	}
	if err := s.needBucket(c); err != nil {
		return err
	}
	var cfg encryptionConfig
	if err := readXML(c, &cfg); err != nil {
		return err
	}
	if len(cfg.Rules) != 1 {
		return s3err(http.StatusBadRequest, "MalformedXML", "ServerSideEncryptionConfiguration needs exactly one Rule")
	}
	d := cfg.Rules[0].Default
	switch d.SSEAlgorithm {
	case "AES256":
		if d.KMSMasterKeyID != "" {
			return s3err(http.StatusBadRequest, "InvalidArgument", "KMSMasterKeyID is only allowed with aws:kms")
		}
	case "aws:kms":
	default:
		return s3err(http.StatusBadRequest, "InvalidArgument", "SSEAlgorithm must be AES256 or aws:kms, not %q", d.SSEAlgorithm)
	}
	cfg.Xmlns = Namespace
	out, _ := xml.Marshal(cfg)
	if _, err := s.db.ExecContext(c.r.Context(), `UPDATE s3_buckets SET encryption = ? WHERE name = ?`, string(out), c.bucket); err != nil {
		return err
	}
	c.w.WriteHeader(http.StatusOK)
	return nil
}

// bucketEncryption returns the bucket's default encryption: algorithm and
// KMS key (AES256 when none is configured, as S3 does since 2023).
func (s *Store) bucketEncryption(c *request) (algo, keyID string, err error) {
	var raw string
	err = s.db.QueryRowContext(c.r.Context(), `SELECT encryption FROM s3_buckets WHERE name = ?`, c.bucket).Scan(&raw)
	if errors.Is(err, sql.ErrNoRows) {
		return "", "", errNoSuchBucket(c.bucket)
	}
	if err != nil || raw == "" {
		return "AES256", "", err
	}
	var cfg encryptionConfig
	if err := xml.Unmarshal([]byte(raw), &cfg); err != nil || len(cfg.Rules) == 0 {
		return "AES256", "", nil
	}
	return cfg.Rules[0].Default.SSEAlgorithm, cfg.Rules[0].Default.KMSMasterKeyID, nil
}

func (s *Store) getBucketEncryption(c *request) error {
	if err := s.authorize(c, "s3:GetEncryptionConfiguration", s.bucketARN(c.bucket), nil); err != nil {
		return err
	}
	algo, key, err := s.bucketEncryption(c)
	if err != nil {
		return err
	}
	var cfg encryptionConfig
	cfg.Xmlns = Namespace
	cfg.Rules = make([]struct {
		Default struct {
			SSEAlgorithm   string
			KMSMasterKeyID string `xml:",omitempty"`
		} `xml:"ApplyServerSideEncryptionByDefault"`
		BucketKeyEnabled bool `xml:",omitempty"`
	}, 1)
	cfg.Rules[0].Default.SSEAlgorithm, cfg.Rules[0].Default.KMSMasterKeyID = algo, key
	return writeXML(c, http.StatusOK, cfg)
}

func (s *Store) deleteBucketEncryption(c *request) error {
	if err := s.authorize(c, "s3:PutEncryptionConfiguration", s.bucketARN(c.bucket), nil); err != nil {
		return err
	}
	if err := s.needBucket(c); err != nil {
		return err
	}
	if _, err := s.db.ExecContext(c.r.Context(), `UPDATE s3_buckets SET encryption = '' WHERE name = ?`, c.bucket); err != nil {
		return err
	}
	c.w.WriteHeader(http.StatusNoContent)
	return nil
}

// ---- bucket policy ----

func (s *Store) putBucketPolicy(c *request) error {
	if err := s.authorize(c, "s3:PutBucketPolicy", s.bucketARN(c.bucket), nil); err != nil {
		return err
	}
	if err := s.needBucket(c); err != nil {
		return err
	}
	body, err := io.ReadAll(io.LimitReader(c.r.Body, 20<<10+1))
	if err != nil {
		return err
	}
	if len(body) > 20<<10 {
		return s3err(http.StatusBadRequest, "PolicyTooLarge", "bucket policies are limited to 20 KB")
	}
	doc, err := policy.Parse(string(body))
	if err != nil {
		return s3err(http.StatusBadRequest, "MalformedPolicy", "%s", err.Error())
	}
	for _, st := range doc.Statements {
		if st.Principal == nil && st.NotPrincipal == nil {
			return s3err(http.StatusBadRequest, "MalformedPolicy", "Missing required field Principal")
		}
	}
	if _, err := s.db.ExecContext(c.r.Context(), `UPDATE s3_buckets SET policy = ? WHERE name = ?`, string(body), c.bucket); err != nil {
		return err
	}
	c.w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Store) getBucketPolicy(c *request) error {
	if err := s.authorize(c, "s3:GetBucketPolicy", s.bucketARN(c.bucket), nil); err != nil {
		return err
	}
	var doc string
	err := s.db.QueryRowContext(c.r.Context(), `SELECT policy FROM s3_buckets WHERE name = ?`, c.bucket).Scan(&doc)
	if errors.Is(err, sql.ErrNoRows) {
		return errNoSuchBucket(c.bucket)
	}
	if err != nil {
		return err
	}
	if doc == "" {
		return s3err(http.StatusNotFound, "NoSuchBucketPolicy", "The bucket policy does not exist")
	}
	c.w.Header().Set("Content-Type", "application/json")
	c.w.Write([]byte(doc))
	return nil
}

func (s *Store) deleteBucketPolicy(c *request) error {
	if err := s.authorize(c, "s3:DeleteBucketPolicy", s.bucketARN(c.bucket), nil); err != nil {
		return err
	}
	if err := s.needBucket(c); err != nil {
		return err
	}
	if _, err := s.db.ExecContext(c.r.Context(), `UPDATE s3_buckets SET policy = '' WHERE name = ?`, c.bucket); err != nil {
		return err
	}
	c.w.WriteHeader(http.StatusNoContent)
	return nil
}

// ---- listing ----

type objectXML struct {
	Key          string
	LastModified string
	ETag         string
	Size         int64
	StorageClass string
	Owner        *owner `xml:",omitempty"`
}

type prefixXML struct{ Prefix string }

func (s *Store) listObjects(c *request) error {
	v2 := c.get("list-type") == "2"
	prefix, delim := c.get("prefix"), c.get("delimiter")
	maxKeys := defaultMaxKeys
	if v := c.get("max-keys"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return s3err(http.StatusBadRequest, "InvalidArgument", "max-keys must be a non-negative integer")
		}
		maxKeys = min(n, defaultMaxKeys)
	}
	encodeURL := c.get("encoding-type") == "url"
	if et := c.get("encoding-type"); et != "" && et != "url" {
		return s3err(http.StatusBadRequest, "InvalidArgument", "Invalid Encoding Method specified in Request")
	}
	cond := map[string][]string{"s3:prefix": {prefix}, "s3:max-keys": {strconv.Itoa(maxKeys)}}
	if delim != "" {
		cond["s3:delimiter"] = []string{delim}
	}
	if err := s.authorize(c, "s3:ListBucket", s.bucketARN(c.bucket), cond); err != nil {
		return err
	}
	if err := s.needBucket(c); err != nil {
		return err
	}
	// The position to continue after: a continuation token (v2, opaque to
	// clients), start-after (v2) or marker (v1).
	after := c.get("marker")
	if v2 {
		after = c.get("start-after")
		if tok := c.get("continuation-token"); tok != "" {
			b, err := base64.RawURLEncoding.DecodeString(tok)
			if err != nil {
				return s3err(http.StatusBadRequest, "InvalidArgument", "The continuation token provided is incorrect")
			}
			after = string(b)
		}
	}
	if delim != "" && strings.HasSuffix(after, delim) && strings.HasPrefix(after, prefix) {
		// Resuming after a common prefix: skip everything under it.
		after += "\U0010FFFF"
	}
	var contents []objectXML
	var prefixes []prefixXML
	seenPrefix := map[string]bool{}
	truncated, last := false, ""
	cursor := after
	// Walk keys in order; a common prefix counts once and is skipped over.
	for maxKeys > 0 && !truncated {
		rows, err := s.db.QueryContext(c.r.Context(), `SELECT key, size, etag, modified FROM s3_objects
			WHERE bucket = ? AND key > ? AND substr(key, 1, length(?)) = ? ORDER BY key LIMIT ?`,
			c.bucket, cursor, prefix, prefix, 1001)
		if err != nil {
			return err
		}
		n := 0
		for rows.Next() {
			n++
			var o objectXML
			var modified string
			if err := rows.Scan(&o.Key, &o.Size, &o.ETag, &modified); err != nil {
				rows.Close()
				return err
			}
			cursor = o.Key
			if len(contents)+len(prefixes) >= maxKeys {
				truncated = true
				break
			}
			if delim != "" {
				if i := strings.Index(o.Key[len(prefix):], delim); i >= 0 {
					cp := o.Key[:len(prefix)+i+len(delim)]
					if !seenPrefix[cp] {
						seenPrefix[cp] = true
						prefixes = append(prefixes, prefixXML{cp})
						last = cp
					}
					// Skip the rest of this prefix in the next query.
					cursor = cp + "\U0010FFFF"
					break
				}
			}
			t, _ := time.Parse(timeLayout, modified)
			o.LastModified, o.StorageClass = awsproto.Timestamp(t), "STANDARD"
			contents = append(contents, o)
			last = o.Key
		}
		rows.Close()
		if n == 0 {
			break
		}
	}
	if encodeURL {
		for i := range contents {
			contents[i].Key = s3URLEncode(contents[i].Key)
		}
		for i := range prefixes {
			prefixes[i].Prefix = s3URLEncode(prefixes[i].Prefix)
		}
	}
	enc := func(v string) string {
		if encodeURL {
			return s3URLEncode(v)
		}
		return v
	}
	if v2 {
		out := struct {
			XMLName               xml.Name `xml:"ListBucketResult"`
			Xmlns                 string   `xml:"xmlns,attr"`
			Name                  string
			Prefix                string
			Delimiter             string `xml:",omitempty"`
			MaxKeys               int
			EncodingType          string `xml:",omitempty"`
			KeyCount              int
			IsTruncated           bool
			ContinuationToken     string      `xml:",omitempty"`
			NextContinuationToken string      `xml:",omitempty"`
			StartAfter            string      `xml:",omitempty"`
			Contents              []objectXML `xml:"Contents"`
			CommonPrefixes        []prefixXML `xml:"CommonPrefixes"`
		}{Xmlns: Namespace, Name: c.bucket, Prefix: enc(prefix), Delimiter: enc(delim), MaxKeys: maxKeys,
			KeyCount: len(contents) + len(prefixes), IsTruncated: truncated, ContinuationToken: c.get("continuation-token"),
			StartAfter: enc(c.get("start-after")), Contents: contents, CommonPrefixes: prefixes}
		if encodeURL {
			out.EncodingType = "url"
		}
		if truncated {
			out.NextContinuationToken = base64.RawURLEncoding.EncodeToString([]byte(last))
		}
		return writeXML(c, http.StatusOK, out)
	}
	for i := range contents {
		o := s.owner()
		contents[i].Owner = &o
	}
	out := struct {
		XMLName        xml.Name `xml:"ListBucketResult"`
		Xmlns          string   `xml:"xmlns,attr"`
		Name           string
		Prefix         string
		Marker         string
		NextMarker     string `xml:",omitempty"`
		MaxKeys        int
		Delimiter      string `xml:",omitempty"`
		EncodingType   string `xml:",omitempty"`
		IsTruncated    bool
		Contents       []objectXML `xml:"Contents"`
		CommonPrefixes []prefixXML `xml:"CommonPrefixes"`
	}{Xmlns: Namespace, Name: c.bucket, Prefix: enc(prefix), Marker: enc(c.get("marker")), MaxKeys: maxKeys,
		Delimiter: enc(delim), IsTruncated: truncated, Contents: contents, CommonPrefixes: prefixes}
	if encodeURL {
		out.EncodingType = "url"
	}
	if truncated {
		out.NextMarker = enc(last)
	}
	return writeXML(c, http.StatusOK, out)
}

// s3URLEncode encodes a key the way S3 does for encoding-type=url.
func s3URLEncode(s string) string {
	return strings.ReplaceAll(url.QueryEscape(s), "+", "%20")
}
