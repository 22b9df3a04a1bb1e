package sagemaker

import (
	"context"
	"database/sql"
	"encoding/base64"
	"net/http"
	"strconv"

	"convoy/internal/iam"
)

const maxTags = 50

// tagConditions adds the condition keys of a request that sets tags,
// aws:RequestTag/<key> and aws:TagKeys, to cond (which may be nil).
func tagConditions(cond map[string][]string, tags []Tag) map[string][]string {
	if len(tags) == 0 {
		return cond
	}
	out := make(map[string][]string, len(cond)+len(tags)+1)
	for k, v := range cond {
		out[k] = v
	}
	keys := make([]string, 0, len(tags))
	for _, t := range tags {
		keys = append(keys, t.Key)
		out["aws:RequestTag/"+t.Key] = []string{t.Value}
	}
	out["aws:TagKeys"] = keys
	return out
}

// authorizeCreateTags checks, for a Create* request that carries tags,
// that p may also tag the new resource: AWS requires sagemaker:AddTags for
// tags given at creation, so a principal denied AddTags cannot tag
// through Create*.
func (s *Service) authorizeCreateTags(ctx context.Context, p *iam.Principal, arn string, tags []Tag) error {
	if len(tags) == 0 {
		return nil
	}
	return s.iam.Authorize(ctx, p, "sagemaker:AddTags", arn, tagConditions(nil, tags))
}

// taggable checks that arn names a resource of this service that exists.
func (s *Service) taggable(r *http.Request, arn string) error {
	var one int
	err := s.db.QueryRowContext(r.Context(), `SELECT 1 FROM sm_training_jobs WHERE arn = ?
		UNION ALL SELECT 1 FROM sm_processing_jobs WHERE arn = ?
		UNION ALL SELECT 1 FROM sm_models WHERE arn = ?
		UNION ALL SELECT 1 FROM sm_endpoint_configs WHERE arn = ?
		UNION ALL SELECT 1 FROM sm_endpoints WHERE arn = ?
		UNION ALL SELECT 1 FROM sm_transform_jobs WHERE arn = ? LIMIT 1`, arn, arn, arn, arn, arn, arn).Scan(&one)
	if isNoRows(err) {
		return notFound("Requested resource not found: %s", arn)
	}
	return err
}

func (s *Service) addTags(r *http.Request, p *iam.Principal, body []byte) (any, error) {
	var req struct {
		ResourceArn string
		Tags        []Tag
	}
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	if err := s.iam.Authorize(r.Context(), p, "sagemaker:AddTags", req.ResourceArn, tagConditions(nil, req.Tags)); err != nil {
		return nil, err
	}
	if err := s.taggable(r, req.ResourceArn); err != nil {
		return nil, err
	}
	for _, t := range req.Tags {
		if t.Key == "" || len(t.Key) > 128 || len(t.Value) > 256 {
			return nil, validation("tag keys are 1 to 128 characters and values at most 256")
		}
	}
	err := s.db.Tx(r.Context(), func(tx *sql.Tx) error {
		for _, t := range req.Tags {
			if _, err := tx.Exec(`INSERT OR REPLACE INTO sm_tags (arn, key, value) VALUES (?, ?, ?)`, req.ResourceArn, t.Key, t.Value); err != nil {
				return err
			}
		}
		var n int
		if err := tx.QueryRow(`SELECT COUNT(*) FROM sm_tags WHERE arn = ?`, req.ResourceArn).Scan(&n); err != nil {
			return err
		}
		if n > maxTags {
			return validation("a resource can have at most %d tags", maxTags)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return map[string]any{"Tags": req.Tags}, nil
}

func (s *Service) listTags(r *http.Request, p *iam.Principal, body []byte) (any, error) {
	var req struct {
		ResourceArn string
		NextToken   string
		MaxResults  int
	}
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	if err := s.iam.Authorize(r.Context(), p, "sagemaker:ListTags", req.ResourceArn, nil); err != nil {
		return nil, err
	}
	if err := s.taggable(r, req.ResourceArn); err != nil {
		return nil, err
	}
	if req.MaxResults == 0 {
		req.MaxResults = 50
	}
	start := 0
	if req.NextToken != "" {
		b, err := base64.RawURLEncoding.DecodeString(req.NextToken)
		if start, _ = strconv.Atoi(string(b)); err != nil || start < 0 {
			return nil, validation("NextToken is invalid")
		}
	}
	rows, err := s.db.QueryContext(r.Context(), `SELECT key, value FROM sm_tags WHERE arn = ? ORDER BY key LIMIT ? OFFSET ?`,
		req.ResourceArn, req.MaxResults+1, start)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	tags := []Tag{}
	for rows.Next() {
		var t Tag
		if err := rows.Scan(&t.Key, &t.Value); err != nil {
			return nil, err
		}
		tags = append(tags, t)
	}
	out := map[string]any{}
	if len(tags) > req.MaxResults {
		tags = tags[:req.MaxResults]
		out["NextToken"] = base64.RawURLEncoding.EncodeToString([]byte(strconv.Itoa(start + req.MaxResults)))
	}
	out["Tags"] = tags
	return out, rows.Err()
}

func (s *Service) deleteTags(r *http.Request, p *iam.Principal, body []byte) (any, error) {
	var req struct {
		ResourceArn string
		TagKeys     []string
	}
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	var cond map[string][]string
	if len(req.TagKeys) > 0 {
		cond = map[string][]string{"aws:TagKeys": req.TagKeys}
	}
	if err := s.iam.Authorize(r.Context(), p, "sagemaker:DeleteTags", req.ResourceArn, cond); err != nil {
		return nil, err
	}
	if err := s.taggable(r, req.ResourceArn); err != nil {
		return nil, err
	}
	for _, k := range req.TagKeys {
		if _, err := s.db.ExecContext(r.Context(), `DELETE FROM sm_tags WHERE arn = ? AND key = ?`, req.ResourceArn, k); err != nil {
			return nil, err
		}
	}
	return map[string]any{}, nil
}
