package sagemaker

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"convoy/internal/awsproto"
	"convoy/internal/iam"
)

// Models (CreateModel and friends) are records: an image, the model data to
// put in /opt/ml/model, an environment and the role that fetches the data.
// Nothing runs until an endpoint uses one.

// CreateModelRequest holds the fields convoy honours.
type CreateModelRequest struct {
	ModelName                string
	PrimaryContainer         *ContainerDefinition  `json:",omitempty"`
	Containers               []ContainerDefinition `json:",omitempty"`
	InferenceExecutionConfig json.RawMessage       `json:",omitempty"`
	ExecutionRoleArn         string                `json:",omitempty"`
	VpcConfig                json.RawMessage       `json:",omitempty"`
	EnableNetworkIsolation   bool
	Tags                     []Tag `json:",omitempty"`
}

// ContainerDefinition is a model's container.
type ContainerDefinition struct {
	ContainerHostname string            `json:",omitempty"`
	Image             string            `json:",omitempty"`
	ImageConfig       json.RawMessage   `json:",omitempty"`
	Mode              string            `json:",omitempty"`
	ModelDataUrl      string            `json:",omitempty"`
	ModelDataSource   json.RawMessage   `json:",omitempty"`
	Environment       map[string]string `json:",omitempty"`
	ModelPackageName  string            `json:",omitempty"`
	MultiModelConfig  json.RawMessage   `json:",omitempty"`
}

// container is the one container convoy runs for a model.
func (r *CreateModelRequest) container() *ContainerDefinition {
	if r.PrimaryContainer != nil {
		return r.PrimaryContainer
	}
	if len(r.Containers) > 0 {
		return &r.Containers[0]
	}
	return nil
}

var (
	// modelNameRE is ModelName's pattern (variant names use jobNameRE's).
	modelNameRE = regexp.MustCompile(`^[a-zA-Z0-9]([\-a-zA-Z0-9]*[a-zA-Z0-9])?$`)
	envKeyRE    = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)
	// modelDataRE is an s3:// ModelDataUrl: a bucket and a key.
	modelDataRE = regexp.MustCompile(`^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/(.+)$`)
)

// isNull reports whether a raw JSON member was absent or null.
func isNull(m json.RawMessage) bool { return len(m) == 0 || string(m) == "null" }

func (r *CreateModelRequest) validate() error {
	if len(r.ModelName) > 63 || !modelNameRE.MatchString(r.ModelName) {
		return validation("1 validation error detected: Value '%s' at 'modelName' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9]([\\-a-zA-Z0-9]*[a-zA-Z0-9])?", r.ModelName)
	}
	if r.ExecutionRoleArn != "" && !roleRE.MatchString(r.ExecutionRoleArn) {
		return validation("1 validation error detected: Value '%s' at 'executionRoleArn' failed to satisfy constraint: Member must satisfy regular expression pattern: ^arn:aws[a-z\\-]*:iam::\\d{12}:role/?[a-zA-Z_0-9+=,.@\\-_/]+$", r.ExecutionRoleArn)
	}
	switch {
	case r.PrimaryContainer != nil && len(r.Containers) > 0:
		return validation("Specify either PrimaryContainer or Containers, not both")
	case r.PrimaryContainer == nil && len(r.Containers) == 0:
		return validation("Either PrimaryContainer or Containers is required")
	case len(r.Containers) > 1:
		return validation("this convoy runs one container per model: inference pipelines (Containers with %d entries) are not supported yet", len(r.Containers))
	}
	if !isNull(r.VpcConfig) {
		return validation("VpcConfig is not supported by this convoy: model containers reach convoy's API only (or nothing, with EnableNetworkIsolation)")
	}
	if !isNull(r.InferenceExecutionConfig) {
		return validation("InferenceExecutionConfig is not supported by this convoy")
	}
	c := r.container()
	switch {
	case c.ModelPackageName != "":
		return validation("ModelPackageName is not supported by this convoy; give Image and ModelDataUrl")
	case c.Image == "":
		return validation("The container's Image is required")
	case len(c.Image) > 255 || strings.ContainsAny(c.Image, " \t\n"):
		return validation("1 validation error detected: Value '%s' at 'image' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\S]+ (at most 255 characters)", c.Image)
	case c.Mode != "" && c.Mode != "SingleModel":
		return validation("Mode %s is not supported by this convoy; use SingleModel", c.Mode)
	case !isNull(c.ModelDataSource) || !isNull(c.MultiModelConfig) || !isNull(c.ImageConfig):
		return validation("ModelDataSource, MultiModelConfig and ImageConfig are not supported by this convoy; give ModelDataUrl (s3://bucket/model.tar.gz) and an image imported with `convoy images import`")
	}
	if c.ModelDataUrl != "" {
		if !modelDataRE.MatchString(c.ModelDataUrl) {
			return validation("ModelDataUrl %q: this convoy fetches model data from its object store only: give s3://bucket/key of a model.tar.gz", c.ModelDataUrl)
		}
		if r.ExecutionRoleArn == "" {
			return validation("ExecutionRoleArn is required with ModelDataUrl: the role's credentials fetch the model data")
		}
	}
	if len(c.Environment) > 100 {
		return validation("Environment may have at most 100 entries")
	}
	for k, v := range c.Environment {
		if len(k) > 1024 || !envKeyRE.MatchString(k) || len(v) > 1024 {
			return validation("Environment key %q must match [a-zA-Z_][a-zA-Z0-9_]* and values be at most 1024 characters", k)
		}
	}
	if len(r.Tags) > maxTags {
		return validation("a resource can have at most %d tags", maxTags)
	}
	return nil
}

func (s *Service) modelARN(name string) string {
	return fmt.Sprintf("arn:aws:sagemaker:%s:%s:model/%s", s.region, s.iam.AccountID(), lower(name))
}

// ImageChecker is implemented by a ModelHost that can tell, before a model
// is recorded, that it could never run its image, or may not (the
// vulnerability gate).
type ImageChecker interface {
	CheckImage(ctx context.Context, image string) error
}

func (s *Service) createModel(r *http.Request, p *iam.Principal, body []byte) (any, error) {
	var req CreateModelRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	if err := req.validate(); err != nil {
		return nil, err
	}
	ctx := r.Context()
	arn := s.modelARN(req.ModelName)
	cond := map[string][]string{"sagemaker:NetworkIsolation": {strconv.FormatBool(req.EnableNetworkIsolation)}}
	if err := s.iam.Authorize(ctx, p, "sagemaker:CreateModel", arn, tagConditions(cond, req.Tags)); err != nil {
		return nil, err
	}
	if err := s.authorizeCreateTags(ctx, p, arn, req.Tags); err != nil {
		return nil, err
	}
	if req.ExecutionRoleArn != "" {
		if _, err := s.iam.AuthorizePassRole(ctx, p, req.ExecutionRoleArn, "sagemaker.amazonaws.com"); err != nil {
			var ae *awsproto.Error
			if errors.As(err, &ae) && ae.Code == "NoSuchEntity" {
				return nil, validation("Could not assume role %s. Please ensure that the role exists and allows principal 'sagemaker.amazonaws.com' to assume the role.", req.ExecutionRoleArn)
			}
			return nil, err
		}
	}
	if c, ok := s.hosting.host.(ImageChecker); ok {
		if err := c.CheckImage(ctx, req.container().Image); err != nil {
			return nil, validation("Image %q cannot be used: %v", req.container().Image, err)
		}
	}
	raw, _ := json.Marshal(req)
	_, err := s.db.ExecContext(ctx, `INSERT INTO sm_models (name, arn, request, creator, created) VALUES (?, ?, ?, ?, ?)`,
		req.ModelName, arn, string(raw), p.ARN, stamp())
	if err != nil && strings.Contains(err.Error(), "UNIQUE") {
		return nil, validation("Cannot create already existing model %q.", arn)
	}
	if err != nil {
		return nil, err
	}
	s.putTags(ctx, arn, req.Tags)
	return map[string]string{"ModelArn": arn}, nil
}

// putTags records a new resource's tags.
func (s *Service) putTags(ctx context.Context, arn string, tags []Tag) {
	for _, t := range tags {
		if _, err := s.db.ExecContext(ctx, `INSERT OR REPLACE INTO sm_tags (arn, key, value) VALUES (?, ?, ?)`, arn, t.Key, t.Value); err != nil {
			s.log.Error("record tag", "arn", arn, "err", err)
		}
	}
}

// loadModel returns a model's request and ARN.
func (s *Service) loadModel(ctx context.Context, name string) (*CreateModelRequest, stored, error) {
	return loadStored[CreateModelRequest](ctx, s, "sm_models", name, validation("Could not find model %q.", s.modelARN(name)))
}

// stored is a resource's row as Describe needs it: the request it was
// created with (JSON) and when.
type stored struct{ raw, arn, created string }

// loadStored reads the request a resource named name was created with from
// table (a constant: sm_models, sm_endpoint_configs), or notFound.
func loadStored[T any](ctx context.Context, s *Service, table, name string, notFound error) (*T, stored, error) {
	var st stored
	err := s.db.QueryRowContext(ctx, `SELECT request, arn, created FROM `+table+` WHERE name = ?`, name).Scan(&st.raw, &st.arn, &st.created)
	if isNoRows(err) {
		return nil, st, notFound
	}
	if err != nil {
		return nil, st, err
	}
	var req T
	if err := json.Unmarshal([]byte(st.raw), &req); err != nil {
		return nil, st, fmt.Errorf("%s %s: stored request: %w", table, name, err)
	}
	return &req, st, nil
}

// describeOf is a Describe answer: the stored request without its Tags
// (ListTags serves them), plus fields.
func describeOf(request string, fields map[string]any) map[string]any {
	out := map[string]any{}
	json.Unmarshal([]byte(request), &out)
	delete(out, "Tags")
	for k, v := range fields {
		out[k] = v
	}
	return out
}

func (s *Service) describeModel(r *http.Request, p *iam.Principal, body []byte) (any, error) {
	var req struct{ ModelName string }
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	if err := s.iam.Authorize(r.Context(), p, "sagemaker:DescribeModel", s.modelARN(req.ModelName), nil); err != nil {
		return nil, err
	}
	_, st, err := s.loadModel(r.Context(), req.ModelName)
	if err != nil {
		return nil, err
	}
	return describeOf(st.raw, map[string]any{"ModelArn": st.arn, "CreationTime": epoch(st.created)}), nil
}

func (s *Service) deleteModel(r *http.Request, p *iam.Principal, body []byte) (any, error) {
	var req struct{ ModelName string }
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	arn := s.modelARN(req.ModelName)
	if err := s.iam.Authorize(r.Context(), p, "sagemaker:DeleteModel", arn, nil); err != nil {
		return nil, err
	}
	return s.deleteRecord(r.Context(), "sm_models", req.ModelName, "model")
}

// deleteRecord deletes a model or endpoint configuration and its tags. As
// on SageMaker, endpoints that use it keep running.
func (s *Service) deleteRecord(ctx context.Context, table, name, what string) (any, error) {
	var arn string
	err := s.db.Tx(ctx, func(tx *sql.Tx) error {
		if err := tx.QueryRow(`SELECT arn FROM `+table+` WHERE name = ?`, name).Scan(&arn); err != nil {
			return err
		}
		if _, err := tx.Exec(`DELETE FROM `+table+` WHERE name = ?`, name); err != nil {
			return err
		}
		_, err := tx.Exec(`DELETE FROM sm_tags WHERE arn = ?`, arn)
		return err
	})
	if isNoRows(err) {
		arn := s.modelARN(name)
		if what != "model" {
			arn = s.endpointConfigARN(name)
		}
		return nil, validation("Could not find %s %q.", what, arn)
	}
	if err != nil {
		return nil, err
	}
	return map[string]any{}, nil
}

// listRequest is what ListModels and ListEndpointConfigs take.
type listRequest struct {
	NextToken                                     string
	MaxResults                                    int
	NameContains                                  string
	SortBy, SortOrder                             string
	CreationTimeAfter, CreationTimeBefore         *float64
	LastModifiedTimeAfter, LastModifiedTimeBefore *float64
	StatusEquals                                  string
}

// listed is one row of a list.
type listed struct {
	name, created, status string
	modified              float64
	summary               map[string]any
}

// list filters, sorts and pages rows as SageMaker's List* operations do.
func list(req *listRequest, field string, rows []listed) (any, error) {
	if req.MaxResults == 0 {
		req.MaxResults = 10
	}
	if req.MaxResults < 1 || req.MaxResults > 100 {
		return nil, validation("MaxResults must be between 1 and 100")
	}
	var kept []listed
	for _, row := range rows {
		c, _ := epoch(row.created).(float64)
		switch {
		case req.NameContains != "" && !strings.Contains(lower(row.name), lower(req.NameContains)),
			req.StatusEquals != "" && row.status != req.StatusEquals,
			req.CreationTimeAfter != nil && c <= *req.CreationTimeAfter,
			req.CreationTimeBefore != nil && c >= *req.CreationTimeBefore,
			req.LastModifiedTimeAfter != nil && row.modified <= *req.LastModifiedTimeAfter,
			req.LastModifiedTimeBefore != nil && row.modified >= *req.LastModifiedTimeBefore:
			continue
		}
		kept = append(kept, row)
	}
	key := func(i int) string {
		switch req.SortBy {
		case "Name":
			return kept[i].name
		case "Status":
			return kept[i].status
		}
		return kept[i].created
	}
	sort.SliceStable(kept, func(i, j int) bool {
		if req.SortOrder == "Ascending" {
			return key(i) < key(j)
		}
		return key(j) < key(i)
	})
	summaries := make([]map[string]any, 0, len(kept))
	for _, row := range kept {
		summaries = append(summaries, row.summary)
	}
	return pageOf(field, summaries, req.NextToken, req.MaxResults)
}

func (s *Service) listModels(r *http.Request, p *iam.Principal, body []byte) (any, error) {
	return s.listStored(r, p, body, "sagemaker:ListModels", "sm_models", "Model", "Models")
}

// listStored answers the List operation of a stored resource that has no
// status (models, endpoint configurations): summaries of <kind>Name,
// <kind>Arn and CreationTime from table, under field.
func (s *Service) listStored(r *http.Request, p *iam.Principal, body []byte, action, table, kind, field string) (any, error) {
	var req listRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	if err := s.iam.Authorize(r.Context(), p, action, "*", nil); err != nil {
		return nil, err
	}
	rows, err := s.db.QueryContext(r.Context(), `SELECT name, arn, created FROM `+table)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var all []listed
	for rows.Next() {
		var name, arn, created string
		if err := rows.Scan(&name, &arn, &created); err != nil {
			return nil, err
		}
		all = append(all, listed{name: name, created: created,
			summary: map[string]any{kind + "Name": name, kind + "Arn": arn, "CreationTime": epoch(created)}})
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return list(&req, field, all)
}
