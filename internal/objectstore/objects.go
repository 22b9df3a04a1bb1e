package objectstore

import (
	"context"
	"database/sql"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"convoy/internal/awsproto"
	"convoy/internal/objectstore/sealed"
)

// encryption is how one object's data key is protected.
type encryption struct {
	sse    string // "AES256" (master key) or "aws:kms"
	keyARN string
	blob   []byte // the data key, wrapped by KMS or sealed under the master key
}

// newDataKey makes the data key of a new object: from KMS for SSE-KMS
// (authorized as the caller), otherwise random and sealed under the master
// key. Either way the object is encrypted at rest.
func (s *Store) newDataKey(c *request, objectID, bucket, key, sse, keyRef string) ([]byte, encryption, error) {
	switch sse {
	case "AES256":
		dk := randomKey()
		return dk, encryption{sse: "AES256", blob: s.cfg.Box.Seal(dk, []byte("s3-dk:"+objectID))}, nil
	case "aws:kms":
		ctx := c.r.Context()
		if keyRef == "" {
			var err error
			if keyRef, err = s.cfg.KMS.DefaultKey(ctx, defaultKMSAlias); err != nil {
				return nil, encryption{}, err
			}
		}
		dk, blob, arn, err := s.cfg.KMS.GenerateDataKey(ctx, c.p, keyRef, s.encryptionContext(bucket, key), s.via())
		if err != nil {
			return nil, encryption{}, kmsError(err)
		}
		return dk, encryption{sse: "aws:kms", keyARN: arn, blob: blob}, nil
	}
	return nil, encryption{}, s3err(http.StatusBadRequest, "InvalidArgument", "x-amz-server-side-encryption must be AES256 or aws:kms, not %q", sse)
}

// openDataKey unwraps an object's data key; for SSE-KMS the caller needs
// kms:Decrypt on the key.
func (s *Store) openDataKey(c *request, objectID, bucket, key string, e encryption) ([]byte, error) {
	if e.sse != "aws:kms" {
		dk, err := s.cfg.Box.Open(e.blob, []byte("s3-dk:"+objectID))
		if err != nil {
			return nil, fmt.Errorf("object %s data key: %w", objectID, err)
		}
		return dk, nil
	}
	dk, _, err := s.cfg.KMS.Decrypt(c.r.Context(), c.p, e.blob, s.encryptionContext(bucket, key), s.via())
	if err != nil {
		return nil, kmsError(err)
	}
	return dk, nil
}

// kmsError turns a KMS failure into the error S3 answers with.
func kmsError(err error) error {
	var ae *awsproto.Error
	if !errors.As(err, &ae) {
		return err
	}
	switch ae.Code {
	case "AccessDenied", "AccessDeniedException":
		return s3err(http.StatusForbidden, "AccessDenied", "%s", ae.Message)
	case "NotFoundException":
		return s3err(http.StatusBadRequest, "KMS.NotFoundException", "%s", ae.Message)
	case "DisabledException":
		return s3err(http.StatusBadRequest, "KMS.DisabledException", "%s", ae.Message)
	case "KMSInvalidStateException":
		return s3err(http.StatusBadRequest, "KMS.KMSInvalidStateException", "%s", ae.Message)
	}
	return s3err(http.StatusBadRequest, "KMS."+ae.Code, "%s", ae.Message)
}

// sseFor decides the encryption of a new object from its request headers
// and the bucket default.
func (s *Store) sseFor(c *request) (sse, keyRef string, err error) {
	sse = c.r.Header.Get("X-Amz-Server-Side-Encryption")
	keyRef = c.r.Header.Get("X-Amz-Server-Side-Encryption-Aws-Kms-Key-Id")
	if c.r.Header.Get("X-Amz-Server-Side-Encryption-Customer-Algorithm") != "" {
		return "", "", s3err(http.StatusNotImplemented, "NotImplemented", "SSE-C (customer-provided keys) is not supported by convoy; use SSE-KMS")
	}
	if sse == "" {
		if keyRef != "" {
			return "", "", s3err(http.StatusBadRequest, "InvalidArgument", "x-amz-server-side-encryption-aws-kms-key-id requires x-amz-server-side-encryption: aws:kms")
		}
		return s.bucketEncryption(c)
	}
	if sse == "AES256" && keyRef != "" {
		return "", "", s3err(http.StatusBadRequest, "InvalidArgument", "a KMS key id is only allowed with aws:kms")
	}
	return sse, keyRef, nil
}

func putConditions(sse, keyRef string) map[string][]string {
	cond := map[string][]string{"s3:x-amz-server-side-encryption": {sse}}
	if keyRef != "" {
		cond["s3:x-amz-server-side-encryption-aws-kms-key-id"] = []string{keyRef}
	}
	return cond
}

func (s *Store) putObject(c *request) error {
	sse, keyRef, err := s.sseFor(c)
	if err != nil {
		return err
	}
	if err := s.authorize(c, "s3:PutObject", s.objectARN(c.bucket, c.key), putConditions(sse, keyRef)); err != nil {
		return err
	}
	if err := s.needBucket(c); err != nil {
		return err
	}
	algo, claimed, err := requestedChecksum(c.r)
	if err != nil {
		return err
	}
	objectID := newID()
	dk, enc, err := s.newDataKey(c, objectID, c.bucket, c.key, sse, keyRef)
	if err != nil {
		return err
	}
	w, etag, err := s.storeBody(c, dk, enc, algo, claimed)
	if err != nil {
		return err
	}
	o := objectRow{bucket: c.bucket, key: c.key, objectID: objectID, size: w.size, etag: etag, enc: enc,
		meta: s.sealMeta(metaFromRequest(c.r), objectID), checksumAlgo: algo, checksum: w.checksum,
		extents: []extent{{file: w.file, size: w.size}}}
	if err := s.commit(c.r.Context(), o); err != nil {
		s.removeFiles([]string{w.file})
		return err
	}
	h := c.w.Header()
	h.Set("ETag", etag)
	setSSEHeaders(h, enc)
	if algo != "" {
		h.Set("X-Amz-Checksum-"+strings.ToUpper(algo), w.checksum)
	}
	c.w.WriteHeader(http.StatusOK)
	return nil
}

func setSSEHeaders(h http.Header, e encryption) {
	h.Set("X-Amz-Server-Side-Encryption", e.sse)
	if e.keyARN != "" {
		h.Set("X-Amz-Server-Side-Encryption-Aws-Kms-Key-Id", e.keyARN)
	}
}

type extent struct {
	file string
	size int64
}

type objectRow struct {
	bucket, key, objectID string
	size                  int64
	etag                  string
	modified              time.Time
	enc                   encryption
	meta                  []byte
	checksumAlgo          string
	checksum              string
	extents               []extent
}

// commit makes an object visible, replacing any object of the same key, in
// one transaction; the replaced object's files are removed afterwards.
func (s *Store) commit(ctx context.Context, o objectRow) error {
	var old []string
	err := s.db.Tx(ctx, func(tx *sql.Tx) error {
		var err error
		if old, err = deleteRow(tx, o.bucket, o.key); err != nil {
			return err
		}
		if _, err := tx.Exec(`INSERT INTO s3_objects (bucket, key, object_id, size, etag, modified, sse, kms_key_arn, data_key, meta_sealed, checksum_algo, checksum)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, o.bucket, o.key, o.objectID, o.size, o.etag, now().Format(timeLayout),
			o.enc.sse, o.enc.keyARN, o.enc.blob, o.meta, o.checksumAlgo, o.checksum); err != nil {
			if strings.Contains(err.Error(), "FOREIGN KEY") {
				return errNoSuchBucket(o.bucket)
			}
			return err
		}
		for i, e := range o.extents {
			if _, err := tx.Exec(`INSERT INTO s3_extents (object_id, idx, file, size) VALUES (?, ?, ?, ?)`, o.objectID, i, e.file, e.size); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		s.removeFiles(old)
	}
	return err
}

// deleteRow removes an object's metadata in tx and returns its files.
func deleteRow(tx *sql.Tx, bucket, key string) ([]string, error) {
	var objectID string
	err := tx.QueryRow(`SELECT object_id FROM s3_objects WHERE bucket = ? AND key = ?`, bucket, key).Scan(&objectID)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	files, err := collectFiles(tx, `SELECT file FROM s3_extents WHERE object_id = ?`, objectID)
	if err != nil {
		return nil, err
	}
	if _, err := tx.Exec(`DELETE FROM s3_extents WHERE object_id = ?`, objectID); err != nil {
		return nil, err
	}
	_, err = tx.Exec(`DELETE FROM s3_objects WHERE bucket = ? AND key = ?`, bucket, key)
	return files, err
}

// collectFiles returns the file names a query selects.
func collectFiles(tx *sql.Tx, query string, args ...any) ([]string, error) {
	rows, err := tx.Query(query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var files []string
	for rows.Next() {
		var f string
		if err := rows.Scan(&f); err != nil {
			return nil, err
		}
		files = append(files, f)
	}
	return files, rows.Err()
}

// storeBody writes a request body under dataKey and checks the digests the
// client sent; on any failure nothing is left behind.
func (s *Store) storeBody(c *request, dataKey []byte, enc encryption, algo, claimed string) (written, string, error) {
	withMD5 := enc.sse != "aws:kms" || c.r.Header.Get("Content-Md5") != ""
	w, err := s.writeBody(c.r, c.r.Body, dataKey, maxPutSize, algo, withMD5)
	if err != nil {
		return written{}, "", err
	}
	if err := verifyDigests(c.r, w, algo, claimed); err != nil {
		s.removeFiles([]string{w.file})
		return written{}, "", err
	}
	return w, fmt.Sprintf("%q", hex.EncodeToString(w.md5)), nil
}

// loadObject reads an object's metadata.
func (s *Store) loadObject(ctx context.Context, bucket, key string) (*objectRow, error) {
	o := &objectRow{bucket: bucket, key: key}
	var modified string
	err := s.db.QueryRowContext(ctx, `SELECT object_id, size, etag, modified, sse, kms_key_arn, data_key, meta_sealed, checksum_algo, checksum
		FROM s3_objects WHERE bucket = ? AND key = ?`, bucket, key).Scan(&o.objectID, &o.size, &o.etag, &modified,
		&o.enc.sse, &o.enc.keyARN, &o.enc.blob, &o.meta, &o.checksumAlgo, &o.checksum)
	if errors.Is(err, sql.ErrNoRows) {
		if ok, _ := s.bucketExists(ctx, bucket); !ok {
			return nil, errNoSuchBucket(bucket)
		}
		return nil, errNoSuchKey(key)
	}
	if err != nil {
		return nil, err
	}
	o.modified, _ = time.Parse(timeLayout, modified)
	rows, err := s.db.QueryContext(ctx, `SELECT file, size FROM s3_extents WHERE object_id = ? ORDER BY idx`, o.objectID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var e extent
		if err := rows.Scan(&e.file, &e.size); err != nil {
			return nil, err
		}
		o.extents = append(o.extents, e)
	}
	return o, rows.Err()
}

// objectReader opens the decrypted bytes [off, off+n) of an object.
type objectReader struct {
	files []*os.File
	r     io.Reader
}

func (o *objectReader) Read(p []byte) (int, error) { return o.r.Read(p) }

func (o *objectReader) Close() error {
	for _, f := range o.files {
		f.Close()
	}
	return nil
}

func (s *Store) openRange(o *objectRow, dk []byte, off, n int64) (*objectReader, error) {
	out := &objectReader{}
	var readers []io.Reader
	pos := int64(0)
	for _, e := range o.extents {
		start, end := max(off, pos), min(off+n, pos+e.size)
		if start < end {
			f, err := os.Open(s.filePath(e.file))
			if err != nil {
				out.Close()
				return nil, fmt.Errorf("open object file %s of %s/%s: %w", e.file, o.bucket, o.key, err)
			}
			out.files = append(out.files, f)
			fi, err := f.Stat()
			if err != nil {
				out.Close()
				return nil, err
			}
			sr, err := sealed.NewReader(f, fi.Size(), dk, []byte(e.file))
			if err != nil {
				out.Close()
				return nil, fmt.Errorf("object file %s of %s/%s: %w", e.file, o.bucket, o.key, err)
			}
			if sr.Size() != e.size {
				out.Close()
				return nil, fmt.Errorf("object file %s of %s/%s holds %d bytes, metadata says %d", e.file, o.bucket, o.key, sr.Size(), e.size)
			}
			readers = append(readers, sr.NewSectionReader(start-pos, end-start))
		}
		pos += e.size
	}
	out.r = io.MultiReader(readers...)
	return out, nil
}

func (s *Store) getObject(c *request, head bool) error {
	if err := s.authorize(c, "s3:GetObject", s.objectARN(c.bucket, c.key), nil); err != nil {
		return err
	}
	ctx := c.r.Context()
	o, err := s.loadObject(ctx, c.bucket, c.key)
	if err != nil {
		return err
	}
	meta, err := s.openMeta(o.meta, o.objectID)
	if err != nil {
		return err
	}
	h := c.w.Header()
	if status := checkConditions(c.r, o); status != 0 {
		h.Set("ETag", o.etag)
		if status == http.StatusPreconditionFailed {
			return s3err(status, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold")
		}
		c.w.WriteHeader(status)
		return nil
	}
	off, n, partial, err := parseRange(c.r.Header.Get("Range"), o.size)
	if err != nil {
		return err
	}
	meta.apply(h)
	h.Set("ETag", o.etag)
	h.Set("Last-Modified", o.modified.Format(http.TimeFormat))
	h.Set("Accept-Ranges", "bytes")
	setSSEHeaders(h, o.enc)
	if o.checksumAlgo != "" && !partial && strings.EqualFold(c.r.Header.Get("X-Amz-Checksum-Mode"), "ENABLED") && len(o.extents) == 1 {
		h.Set("X-Amz-Checksum-"+strings.ToUpper(o.checksumAlgo), o.checksum)
		h.Set("X-Amz-Checksum-Type", "FULL_OBJECT")
	}
	if len(o.extents) > 1 {
		h.Set("X-Amz-Mp-Parts-Count", strconv.Itoa(len(o.extents)))
	}
	h.Set("Content-Length", strconv.FormatInt(n, 10))
	status := http.StatusOK
	if partial {
		status = http.StatusPartialContent
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", off, off+n-1, o.size))
	}
	if head {
		c.w.WriteHeader(status)
		return nil
	}
	dk, err := s.openDataKey(c, o.objectID, c.bucket, c.key, o.enc)
	if err != nil {
		clearObjectHeaders(h)
		return err
	}
	rd, err := s.openRange(o, dk, off, n)
	if err != nil {
		clearObjectHeaders(h)
		return err
	}
	defer rd.Close()
	c.w.WriteHeader(status)
	// Decryption (this goroutine) overlaps the TLS writes (pipeCopy's).
	copied, err := pipeCopy(c.w, rd, n)
	s.metrics.bytesOut.Add(float64(copied))
	if err != nil && copied < n {
		// Headers are gone: cut the connection so the client sees a
		// short body, never a complete-looking wrong one.
		s.log.Error("object read failed mid-stream", "bucket", c.bucket, "key", c.key, "err", err, "sent", copied)
		panic(http.ErrAbortHandler)
	}
	return nil
}

func clearObjectHeaders(h http.Header) {
	for k := range h {
		if !strings.HasPrefix(strings.ToLower(k), "x-amz-request-id") && !strings.EqualFold(k, "x-amzn-requestid") && !strings.EqualFold(k, "x-amz-id-2") {
			delete(h, k)
		}
	}
}

// checkConditions evaluates If-Match and friends; 0 means proceed.
func checkConditions(r *http.Request, o *objectRow) int {
	match := func(list string) bool {
		for _, e := range strings.Split(list, ",") {
			if e = strings.TrimSpace(e); e == "*" || e == o.etag || `"`+e+`"` == o.etag {
				return true
			}
		}
		return false
	}
	mod := o.modified.Truncate(time.Second)
	if v := r.Header.Get("If-Match"); v != "" && !match(v) {
		return http.StatusPreconditionFailed
	}
	if v := r.Header.Get("If-Unmodified-Since"); v != "" && r.Header.Get("If-Match") == "" {
		if t, err := http.ParseTime(v); err == nil && mod.After(t) {
			return http.StatusPreconditionFailed
		}
	}
	if v := r.Header.Get("If-None-Match"); v != "" && match(v) {
		return http.StatusNotModified
	}
	if v := r.Header.Get("If-Modified-Since"); v != "" && r.Header.Get("If-None-Match") == "" {
		if t, err := http.ParseTime(v); err == nil && !mod.After(t) {
			return http.StatusNotModified
		}
	}
	return 0
}

// parseRange parses a single-range "bytes=" header.
func parseRange(v string, size int64) (off, n int64, partial bool, err error) {
	if v == "" {
		return 0, size, false, nil
	}
	invalid := s3err(http.StatusRequestedRangeNotSatisfiable, "InvalidRange", "The requested range is not satisfiable")
	spec, ok := strings.CutPrefix(v, "bytes=")
	if !ok || strings.Contains(spec, ",") {
		return 0, size, false, nil // S3 ignores ranges it does not understand
	}
	first, last, ok := strings.Cut(spec, "-")
	if !ok {
		return 0, size, false, nil
	}
	switch {
	case first == "":
		k, err := strconv.ParseInt(last, 10, 64)
		if err != nil || k <= 0 {
			return 0, 0, false, invalid
		}
		k = min(k, size)
		return size - k, k, true, nil
	default:
		a, err := strconv.ParseInt(first, 10, 64)
		if err != nil || a < 0 || a >= size {
			return 0, 0, false, invalid
		}
		b := size - 1
		if last != "" {
			if b, err = strconv.ParseInt(last, 10, 64); err != nil || b < a {
				return 0, 0, false, invalid
			}
			b = min(b, size-1)
		}
		return a, b - a + 1, true, nil
	}
}

func (s *Store) deleteObject(c *request) error {
	if err := s.authorize(c, "s3:DeleteObject", s.objectARN(c.bucket, c.key), nil); err != nil {
		return err
	}
	if err := s.needBucket(c); err != nil {
		return err
	}
	var files []string
	err := s.db.Tx(c.r.Context(), func(tx *sql.Tx) error {
		var err error
		files, err = deleteRow(tx, c.bucket, c.key)
		return err
	})
	if err != nil {
		return err
	}
	s.removeFiles(files)
	c.w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Store) deleteObjects(c *request) error {
	if err := s.needBucket(c); err != nil {
		return err
	}
	var req struct {
		Quiet   bool
		Objects []struct {
			Key string
		} `xml:"Object"`
	}
	if err := readXML(c, &req); err != nil {
		return err
	}
	if len(req.Objects) == 0 || len(req.Objects) > 1000 {
		return s3err(http.StatusBadRequest, "MalformedXML", "Delete needs 1 to 1000 objects, got %d", len(req.Objects))
	}
	type deletedXML struct{ Key string }
	type errorXML struct{ Key, Code, Message string }
	out := struct {
		XMLName xml.Name     `xml:"DeleteResult"`
		Xmlns   string       `xml:"xmlns,attr"`
		Deleted []deletedXML `xml:"Deleted"`
		Errors  []errorXML   `xml:"Error"`
	}{Xmlns: Namespace}
	for _, obj := range req.Objects {
		fail := func(err error) {
			var ae *awsproto.Error
			if errors.As(err, &ae) {
				out.Errors = append(out.Errors, errorXML{obj.Key, ae.Code, ae.Message})
			} else {
				out.Errors = append(out.Errors, errorXML{obj.Key, "InternalError", "internal error"})
			}
		}
		if err := checkKey(obj.Key); err != nil || obj.Key == "" {
			fail(s3err(http.StatusBadRequest, "InvalidArgument", "invalid key %q", obj.Key))
			continue
		}
		if err := s.authorize(c, "s3:DeleteObject", s.objectARN(c.bucket, obj.Key), nil); err != nil {
			fail(err)
			continue
		}
		var files []string
		err := s.db.Tx(c.r.Context(), func(tx *sql.Tx) error {
			var err error
			files, err = deleteRow(tx, c.bucket, obj.Key)
			return err
		})
		if err != nil {
			fail(err)
			continue
		}
		s.removeFiles(files)
		if !req.Quiet {
			out.Deleted = append(out.Deleted, deletedXML{obj.Key})
		}
	}
	return writeXML(c, http.StatusOK, out)
}

func (s *Store) copyObject(c *request) error {
	src, err := url.PathUnescape(c.r.Header.Get("X-Amz-Copy-Source"))
	if err != nil {
		return s3err(http.StatusBadRequest, "InvalidArgument", "Invalid copy source encoding")
	}
	src, _, _ = strings.Cut(src, "?versionId=")
	srcBucket, srcKey, ok := strings.Cut(strings.TrimPrefix(src, "/"), "/")
	if !ok || srcBucket == "" || srcKey == "" {
		return s3err(http.StatusBadRequest, "InvalidArgument", "Copy Source must mention the source bucket and key: sourcebucket/sourcekey")
	}
	if err := checkKey(srcKey); err != nil {
		return err
	}
	srcReq := &request{w: c.w, r: c.r, p: c.p, bucket: srcBucket, key: srcKey, q: c.q}
	if err := s.authorize(srcReq, "s3:GetObject", s.objectARN(srcBucket, srcKey), nil); err != nil {
		return err
	}
	sse, keyRef, err := s.sseFor(c)
	if err != nil {
		return err
	}
	if err := s.authorize(c, "s3:PutObject", s.objectARN(c.bucket, c.key), putConditions(sse, keyRef)); err != nil {
		return err
	}
	if err := s.needBucket(c); err != nil {
		return err
	}
	ctx := c.r.Context()
	o, err := s.loadObject(ctx, srcBucket, srcKey)
	if err != nil {
		return err
	}
	meta, err := s.openMeta(o.meta, o.objectID)
	if err != nil {
		return err
	}
	directive := c.r.Header.Get("X-Amz-Metadata-Directive")
	switch directive {
	case "", "COPY":
		if srcBucket == c.bucket && srcKey == c.key && c.r.Header.Get("X-Amz-Server-Side-Encryption") == "" {
			return s3err(http.StatusBadRequest, "InvalidRequest", "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata, storage class, website redirect location or encryption attributes.")
		}
	case "REPLACE":
		meta = metaFromRequest(c.r)
	default:
		return s3err(http.StatusBadRequest, "InvalidArgument", "Unknown metadata directive %q", directive)
	}
	srcKeyBytes, err := s.openDataKey(srcReq, o.objectID, srcBucket, srcKey, o.enc)
	if err != nil {
		return err
	}
	rd, err := s.openRange(o, srcKeyBytes, 0, o.size)
	if err != nil {
		return err
	}
	defer rd.Close()
	objectID := newID()
	dk, enc, err := s.newDataKey(c, objectID, c.bucket, c.key, sse, keyRef)
	if err != nil {
		return err
	}
	w, err := s.writeBody(&http.Request{ContentLength: o.size, Header: http.Header{}}, rd, dk, maxObjectSize, "", enc.sse != "aws:kms")
	if err != nil {
		return err
	}
	etag := fmt.Sprintf("%q", hex.EncodeToString(w.md5))
	row := objectRow{bucket: c.bucket, key: c.key, objectID: objectID, size: w.size, etag: etag, enc: enc,
		meta: s.sealMeta(meta, objectID), extents: []extent{{file: w.file, size: w.size}}}
	if err := s.commit(ctx, row); err != nil {
		s.removeFiles([]string{w.file})
		return err
	}
	setSSEHeaders(c.w.Header(), enc)
	return writeXML(c, http.StatusOK, struct {
		XMLName      xml.Name `xml:"CopyObjectResult"`
		Xmlns        string   `xml:"xmlns,attr"`
		ETag         string
		LastModified string
	}{Xmlns: Namespace, ETag: etag, LastModified: awsproto.Timestamp(now())})
}
