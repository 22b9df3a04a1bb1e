package objectstore

import (
	"database/sql"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"convoy/internal/awsproto"
)

type upload struct {
	id, bucket, key, objectID string
	initiated                 time.Time
	enc                       encryption
	meta                      []byte
	checksumAlgo              string
}

func (s *Store) loadUpload(c *request) (*upload, error) {
	u := &upload{id: c.get("uploadId")}
	var initiated string
	err := s.db.QueryRowContext(c.r.Context(), `SELECT bucket, key, object_id, initiated, sse, kms_key_arn, data_key, meta_sealed, checksum_algo
		FROM s3_uploads WHERE upload_id = ?`, u.id).Scan(&u.bucket, &u.key, &u.objectID, &initiated, &u.enc.sse, &u.enc.keyARN,
		&u.enc.blob, &u.meta, &u.checksumAlgo)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && (u.bucket != c.bucket || u.key != c.key)) {
		return nil, s3err(http.StatusNotFound, "NoSuchUpload", "The specified multipart upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed.")
	}
	if err != nil {
		return nil, err
	}
	u.initiated, _ = time.Parse(timeLayout, initiated)
	return u, nil
}

func (s *Store) createUpload(c *request) error {
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
	algo := strings.ToLower(c.r.Header.Get("X-Amz-Checksum-Algorithm"))
	if algo != "" && checksumAlgos[algo] == nil {
		return s3err(http.StatusBadRequest, "InvalidRequest", "checksum algorithm %q is not supported", algo)
	}
	objectID, uploadID := newID(), newID()
	_, enc, err := s.newDataKey(c, objectID, c.bucket, c.key, sse, keyRef)
	if err != nil {
		return err
	}
	_, err = s.db.ExecContext(c.r.Context(), `INSERT INTO s3_uploads (upload_id, bucket, key, object_id, initiated, sse, kms_key_arn, data_key, meta_sealed, checksum_algo)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, uploadID, c.bucket, c.key, objectID, now().Format(timeLayout), enc.sse, enc.keyARN,
		enc.blob, s.sealMeta(metaFromRequest(c.r), objectID), algo)
	if err != nil {
		return err
	}
	setSSEHeaders(c.w.Header(), enc)
	if algo != "" {
		c.w.Header().Set("X-Amz-Checksum-Algorithm", strings.ToUpper(algo))
	}
	return writeXML(c, http.StatusOK, struct {
		XMLName  xml.Name `xml:"InitiateMultipartUploadResult"`
		Xmlns    string   `xml:"xmlns,attr"`
		Bucket   string
		Key      string
		UploadId string
	}{Xmlns: Namespace, Bucket: c.bucket, Key: c.key, UploadId: uploadID})
}

func (s *Store) uploadPart(c *request) error {
	n, err := strconv.Atoi(c.get("partNumber"))
	if err != nil || n < 1 || n > maxPartNumber {
		return s3err(http.StatusBadRequest, "InvalidArgument", "Part number must be an integer between 1 and %d, inclusive", maxPartNumber)
	}
	if err := s.authorize(c, "s3:PutObject", s.objectARN(c.bucket, c.key), nil); err != nil {
		return err
	}
	u, err := s.loadUpload(c)
	if err != nil {
		return err
	}
	algo, claimed, err := requestedChecksum(c.r)
	if err != nil {
		return err
	}
	dk, err := s.openDataKey(c, u.objectID, u.bucket, u.key, u.enc)
	if err != nil {
		return err
	}
	w, etag, err := s.storeBody(c, dk, u.enc, algo, claimed)
	if err != nil {
		return err
	}
	var old string
	err = s.db.Tx(c.r.Context(), func(tx *sql.Tx) error {
		// The upload may have been completed or aborted meanwhile.
		var one int
		if err := tx.QueryRow(`SELECT 1 FROM s3_uploads WHERE upload_id = ?`, u.id).Scan(&one); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return s3err(http.StatusNotFound, "NoSuchUpload", "The specified multipart upload does not exist.")
			}
			return err
		}
		tx.QueryRow(`SELECT file FROM s3_parts WHERE upload_id = ? AND part_number = ?`, u.id, n).Scan(&old)
		_, err := tx.Exec(`INSERT INTO s3_parts (upload_id, part_number, file, size, etag, checksum, modified) VALUES (?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (upload_id, part_number) DO UPDATE SET file = excluded.file, size = excluded.size, etag = excluded.etag,
			checksum = excluded.checksum, modified = excluded.modified`, u.id, n, w.file, w.size, etag, w.checksum, now().Format(timeLayout))
		return err
	})
	if err != nil {
		s.removeFiles([]string{w.file})
		return err
	}
	if old != "" {
		s.removeFiles([]string{old})
	}
	h := c.w.Header()
	h.Set("ETag", etag)
	setSSEHeaders(h, u.enc)
	if algo != "" {
		h.Set("X-Amz-Checksum-"+strings.ToUpper(algo), w.checksum)
	}
	c.w.WriteHeader(http.StatusOK)
	return nil
}

type partRow struct {
	number   int
	file     string
	size     int64
	etag     string
	checksum string
	modified string
}

func (s *Store) parts(c *request, uploadID string) ([]partRow, error) {
	rows, err := s.db.QueryContext(c.r.Context(), `SELECT part_number, file, size, etag, checksum, modified FROM s3_parts WHERE upload_id = ? ORDER BY part_number`, uploadID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []partRow
	for rows.Next() {
		var p partRow
		if err := rows.Scan(&p.number, &p.file, &p.size, &p.etag, &p.checksum, &p.modified); err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, rows.Err()
}

func (s *Store) completeUpload(c *request) error {
	if err := s.authorize(c, "s3:PutObject", s.objectARN(c.bucket, c.key), nil); err != nil {
		return err
	}
	u, err := s.loadUpload(c)
	if err != nil {
		return err
	}
	var req struct {
		Parts []struct {
			PartNumber int
			ETag       string
		} `xml:"Part"`
	}
	if err := readXML(c, &req); err != nil {
		return err
	}
	if len(req.Parts) == 0 {
		return s3err(http.StatusBadRequest, "MalformedXML", "You must specify at least one part")
	}
	have, err := s.parts(c, u.id)
	if err != nil {
		return err
	}
	byNumber := map[int]partRow{}
	for _, p := range have {
		byNumber[p.number] = p
	}
	var extents []extent
	var md5s [][]byte
	var size int64
	used := map[string]bool{}
	for i, p := range req.Parts {
		if i > 0 && p.PartNumber <= req.Parts[i-1].PartNumber {
			return s3err(http.StatusBadRequest, "InvalidPartOrder", "The list of parts was not in ascending order. The parts list must be specified in order of the part number.")
		}
	}
	for i, p := range req.Parts {
		got, ok := byNumber[p.PartNumber]
		if !ok || strings.Trim(p.ETag, `"`) != strings.Trim(got.etag, `"`) {
			return s3err(http.StatusBadRequest, "InvalidPart", "One or more of the specified parts could not be found. The part may not have been uploaded, or the specified entity tag may not match the part's entity tag (part %d).", p.PartNumber)
		}
		if i < len(req.Parts)-1 && got.size < minPartSize {
			return s3err(http.StatusBadRequest, "EntityTooSmall", "Your proposed upload is smaller than the minimum allowed size: part %d has %d bytes, parts but the last need %d", p.PartNumber, got.size, minPartSize)
		}
		sum, _ := hex.DecodeString(strings.Trim(got.etag, `"`))
		md5s = append(md5s, sum)
		extents = append(extents, extent{file: got.file, size: got.size})
		used[got.file] = true
		size += got.size
	}
	if size > maxObjectSize {
		return s3err(http.StatusBadRequest, "EntityTooLarge", "the object would be larger than %d bytes", int64(maxObjectSize))
	}
	etag := multipartETag(md5s)
	var unused, replaced []string
	err = s.db.Tx(c.r.Context(), func(tx *sql.Tx) error {
		var one int
		if err := tx.QueryRow(`SELECT 1 FROM s3_uploads WHERE upload_id = ?`, u.id).Scan(&one); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return s3err(http.StatusNotFound, "NoSuchUpload", "The specified multipart upload does not exist.")
			}
			return err
		}
		var err error
		if replaced, err = deleteRow(tx, u.bucket, u.key); err != nil {
			return err
		}
		if _, err := tx.Exec(`INSERT INTO s3_objects (bucket, key, object_id, size, etag, modified, sse, kms_key_arn, data_key, meta_sealed, checksum_algo, checksum)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '', '')`, u.bucket, u.key, u.objectID, size, etag, now().Format(timeLayout),
			u.enc.sse, u.enc.keyARN, u.enc.blob, u.meta); err != nil {
			return err
		}
		for i, e := range extents {
			if _, err := tx.Exec(`INSERT INTO s3_extents (object_id, idx, file, size) VALUES (?, ?, ?, ?)`, u.objectID, i, e.file, e.size); err != nil {
				return err
			}
		}
		for _, p := range have {
			if !used[p.file] {
				unused = append(unused, p.file)
			}
		}
		if _, err := tx.Exec(`DELETE FROM s3_parts WHERE upload_id = ?`, u.id); err != nil {
			return err
		}
		_, err = tx.Exec(`DELETE FROM s3_uploads WHERE upload_id = ?`, u.id)
		return err
	})
	if err != nil {
		return err
	}
	s.removeFiles(append(unused, replaced...))
	setSSEHeaders(c.w.Header(), u.enc)
	return writeXML(c, http.StatusOK, struct {
		XMLName  xml.Name `xml:"CompleteMultipartUploadResult"`
		Xmlns    string   `xml:"xmlns,attr"`
		Location string
		Bucket   string
		Key      string
		ETag     string
	}{Xmlns: Namespace, Location: "/" + u.bucket + "/" + u.key, Bucket: u.bucket, Key: u.key, ETag: etag})
}

func (s *Store) abortUpload(c *request) error {
	if err := s.authorize(c, "s3:AbortMultipartUpload", s.objectARN(c.bucket, c.key), nil); err != nil {
		return err
	}
	u, err := s.loadUpload(c)
	if err != nil {
		return err
	}
	var files []string
	err = s.db.Tx(c.r.Context(), func(tx *sql.Tx) error {
		var err error
		if files, err = collectFiles(tx, `SELECT file FROM s3_parts WHERE upload_id = ?`, u.id); err != nil {
			return err
		}
		if _, err := tx.Exec(`DELETE FROM s3_parts WHERE upload_id = ?`, u.id); err != nil {
			return err
		}
		_, err = tx.Exec(`DELETE FROM s3_uploads WHERE upload_id = ?`, u.id)
		return err
	})
	if err != nil {
		return err
	}
	s.removeFiles(files)
	c.w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Store) listParts(c *request) error {
	if err := s.authorize(c, "s3:ListMultipartUploadParts", s.objectARN(c.bucket, c.key), nil); err != nil {
		return err
	}
	u, err := s.loadUpload(c)
	if err != nil {
		return err
	}
	parts, err := s.parts(c, u.id)
	if err != nil {
		return err
	}
	marker, _ := strconv.Atoi(c.get("part-number-marker"))
	maxParts := 1000
	if v, err := strconv.Atoi(c.get("max-parts")); err == nil && v >= 0 && v < maxParts {
		maxParts = v
	}
	type partXML struct {
		PartNumber   int
		LastModified string
		ETag         string
		Size         int64
	}
	out := struct {
		XMLName              xml.Name `xml:"ListPartsResult"`
		Xmlns                string   `xml:"xmlns,attr"`
		Bucket, Key          string
		UploadId             string
		PartNumberMarker     int
		NextPartNumberMarker int
		MaxParts             int
		IsTruncated          bool
		StorageClass         string
		Initiator            owner
		Owner                owner
		Parts                []partXML `xml:"Part"`
	}{Xmlns: Namespace, Bucket: u.bucket, Key: u.key, UploadId: u.id, PartNumberMarker: marker, MaxParts: maxParts,
		StorageClass: "STANDARD", Initiator: s.owner(), Owner: s.owner()}
	for _, p := range parts {
		if p.number <= marker {
			continue
		}
		if len(out.Parts) == maxParts {
			out.IsTruncated = true
			break
		}
		t, _ := time.Parse(timeLayout, p.modified)
		out.Parts = append(out.Parts, partXML{p.number, awsproto.Timestamp(t), p.etag, p.size})
		out.NextPartNumberMarker = p.number
	}
	return writeXML(c, http.StatusOK, out)
}

func (s *Store) listUploads(c *request) error {
	if err := s.authorize(c, "s3:ListBucketMultipartUploads", s.bucketARN(c.bucket), nil); err != nil {
		return err
	}
	if err := s.needBucket(c); err != nil {
		return err
	}
	prefix := c.get("prefix")
	rows, err := s.db.QueryContext(c.r.Context(), `SELECT upload_id, key, initiated FROM s3_uploads
		WHERE bucket = ? AND substr(key, 1, length(?)) = ? ORDER BY key, initiated LIMIT 1000`, c.bucket, prefix, prefix)
	if err != nil {
		return err
	}
	defer rows.Close()
	type uploadXML struct {
		Key          string
		UploadId     string
		Initiator    owner
		Owner        owner
		StorageClass string
		Initiated    string
	}
	out := struct {
		XMLName     xml.Name `xml:"ListMultipartUploadsResult"`
		Xmlns       string   `xml:"xmlns,attr"`
		Bucket      string
		Prefix      string
		MaxUploads  int
		IsTruncated bool
		Uploads     []uploadXML `xml:"Upload"`
	}{Xmlns: Namespace, Bucket: c.bucket, Prefix: prefix, MaxUploads: 1000}
	for rows.Next() {
		var u uploadXML
		var initiated string
		if err := rows.Scan(&u.UploadId, &u.Key, &initiated); err != nil {
			return err
		}
		t, _ := time.Parse(timeLayout, initiated)
		u.Initiator, u.Owner, u.StorageClass, u.Initiated = s.owner(), s.owner(), "STANDARD", awsproto.Timestamp(t)
		out.Uploads = append(out.Uploads, u)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	return writeXML(c, http.StatusOK, out)
}
