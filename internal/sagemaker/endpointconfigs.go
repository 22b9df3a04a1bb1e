package sagemaker

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strings"

	"convoy/internal/awsproto"
	"convoy/internal/iam"
)

// CreateEndpointConfigRequest holds the fields convoy honours.
type CreateEndpointConfigRequest struct {
	EndpointConfigName       string
	ProductionVariants       []ProductionVariant
	DataCaptureConfig        json.RawMessage `json:",omitempty"`
	Tags                     []Tag           `json:",omitempty"`
	KmsKeyId                 string          `json:",omitempty"`
	AsyncInferenceConfig     json.RawMessage `json:",omitempty"`
	ExplainerConfig          json.RawMessage `json:",omitempty"`
	ShadowProductionVariants json.RawMessage `json:",omitempty"`
	ExecutionRoleArn         string          `json:",omitempty"`
	VpcConfig                json.RawMessage `json:",omitempty"`
	EnableNetworkIsolation   *bool           `json:",omitempty"`
}

// ProductionVariant is one variant of an endpoint configuration.
type ProductionVariant struct {
	VariantName                                 string
	ModelName                                   string
	InitialInstanceCount                        int             `json:",omitempty"`
	InstanceType                                string          `json:",omitempty"`
	InitialVariantWeight                        *float64        `json:",omitempty"`
	AcceleratorType                             string          `json:",omitempty"`
	ServerlessConfig                            json.RawMessage `json:",omitempty"`
	VolumeSizeInGB                              int             `json:",omitempty"`
	ModelDataDownloadTimeoutInSeconds           int             `json:",omitempty"`
	ContainerStartupHealthCheckTimeoutInSeconds int             `json:",omitempty"`
}

const (
	maxVariants = 10
	// maxEndpointInstances bounds one variant's instances: they are
	// containers on this machine.
	maxEndpointInstances = 16
)

var kmsKeyRE = regexp.MustCompile(`^[a-zA-Z0-9:/_-]+$`)

func resourceLimit(format string, args ...any) *awsproto.Error {
	return awsproto.Errorf(http.StatusBadRequest, "ResourceLimitExceeded", format, args...)
}

func (r *CreateEndpointConfigRequest) validate() error {
	if !jobNameRE.MatchString(r.EndpointConfigName) {
		return validation("1 validation error detected: Value '%s' at 'endpointConfigName' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", r.EndpointConfigName)
	}
	if n := len(r.ProductionVariants); n < 1 || n > maxVariants {
		return validation("1 validation error detected: Value at 'productionVariants' failed to satisfy constraint: Member must have length between 1 and %d", maxVariants)
	}
	for name, raw := range map[string]json.RawMessage{"DataCaptureConfig": r.DataCaptureConfig, "AsyncInferenceConfig": r.AsyncInferenceConfig,
		"ExplainerConfig": r.ExplainerConfig, "ShadowProductionVariants": r.ShadowProductionVariants, "VpcConfig": r.VpcConfig} {
		if !isNull(raw) {
			return validation("%s is not supported by this convoy", name)
		}
	}
	if r.ExecutionRoleArn != "" || r.EnableNetworkIsolation != nil {
		return validation("ExecutionRoleArn and EnableNetworkIsolation belong to the model (CreateModel) in this convoy, not to the endpoint configuration")
	}
	if r.KmsKeyId != "" && (len(r.KmsKeyId) > 2048 || !kmsKeyRE.MatchString(r.KmsKeyId)) {
		return validation("1 validation error detected: Value '%s' at 'kmsKeyId' failed to satisfy constraint: Member must satisfy regular expression pattern: [a-zA-Z0-9:/_-]*", r.KmsKeyId)
	}
	seen := map[string]bool{}
	total := 0.0
	for i := range r.ProductionVariants {
		v := &r.ProductionVariants[i]
		switch {
		case !jobNameRE.MatchString(v.VariantName):
			return validation("1 validation error detected: Value '%s' at 'productionVariants.%d.member.variantName' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", v.VariantName, i+1)
		case seen[lower(v.VariantName)]:
			return validation("The variant name %s appears more than once; variant names must be unique within an endpoint configuration", v.VariantName)
		case !modelNameRE.MatchString(v.ModelName) || len(v.ModelName) > 63:
			return validation("1 validation error detected: Value '%s' at 'productionVariants.%d.member.modelName' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9]([\\-a-zA-Z0-9]*[a-zA-Z0-9])?", v.ModelName, i+1)
		case !isNull(v.ServerlessConfig) || v.AcceleratorType != "":
			return validation("variant %s: ServerlessConfig and AcceleratorType are not supported by this convoy", v.VariantName)
		case v.InstanceType == "":
			return validation("variant %s: InstanceType is required", v.VariantName)
		case v.InitialInstanceCount < 1:
			return validation("variant %s: InitialInstanceCount must be at least 1", v.VariantName)
		case v.InitialInstanceCount > maxEndpointInstances:
			return resourceLimit("variant %s: InitialInstanceCount %d exceeds this convoy's limit of %d instances per variant", v.VariantName, v.InitialInstanceCount, maxEndpointInstances)
		case v.InitialVariantWeight != nil && *v.InitialVariantWeight < 0:
			return validation("variant %s: InitialVariantWeight must not be negative", v.VariantName)
		case v.ModelDataDownloadTimeoutInSeconds != 0 && (v.ModelDataDownloadTimeoutInSeconds < 60 || v.ModelDataDownloadTimeoutInSeconds > 3600):
			return validation("variant %s: ModelDataDownloadTimeoutInSeconds must be between 60 and 3600", v.VariantName)
		case v.ContainerStartupHealthCheckTimeoutInSeconds != 0 && (v.ContainerStartupHealthCheckTimeoutInSeconds < 60 || v.ContainerStartupHealthCheckTimeoutInSeconds > 3600):
			return validation("variant %s: ContainerStartupHealthCheckTimeoutInSeconds must be between 60 and 3600", v.VariantName)
		case v.VolumeSizeInGB != 0 && (v.VolumeSizeInGB < 1 || v.VolumeSizeInGB > 512):
			return validation("variant %s: VolumeSizeInGB must be between 1 and 512", v.VariantName)
		}
		seen[lower(v.VariantName)] = true
		if v.InitialVariantWeight == nil {
			one := 1.0
			v.InitialVariantWeight = &one
		}
		total += *v.InitialVariantWeight
	}
	if total <= 0 {
		return validation("The sum of the InitialVariantWeight values must be greater than 0: no variant would receive traffic")
	}
	if len(r.Tags) > maxTags {
		return validation("a resource can have at most %d tags", maxTags)
	}
	return nil
}

func (s *Service) endpointConfigARN(name string) string {
	return fmt.Sprintf("arn:aws:sagemaker:%s:%s:endpoint-config/%s", s.region, s.iam.AccountID(), lower(name))
}

func (s *Service) createEndpointConfig(r *http.Request, p *iam.Principal, body []byte) (any, error) {
	var req CreateEndpointConfigRequest
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	if err := req.validate(); err != nil {
		return nil, err
	}
	ctx := r.Context()
	arn := s.endpointConfigARN(req.EndpointConfigName)
	var types []string
	for _, v := range req.ProductionVariants {
		types = append(types, v.InstanceType)
	}
	cond := map[string][]string{"sagemaker:InstanceTypes": types}
	if req.KmsKeyId != "" {
		cond["sagemaker:VolumeKmsKey"] = []string{req.KmsKeyId}
	}
	if err := s.iam.Authorize(ctx, p, "sagemaker:CreateEndpointConfig", arn, tagConditions(cond, req.Tags)); err != nil {
		return nil, err
	}
	if err := s.authorizeCreateTags(ctx, p, arn, req.Tags); err != nil {
		return nil, err
	}
	for _, v := range req.ProductionVariants {
		if _, _, err := s.loadModel(ctx, v.ModelName); err != nil {
			return nil, err
		}
	}
	raw, _ := json.Marshal(req)
	_, err := s.db.ExecContext(ctx, `INSERT INTO sm_endpoint_configs (name, arn, request, creator, created) VALUES (?, ?, ?, ?, ?)`,
		req.EndpointConfigName, arn, string(raw), p.ARN, stamp())
	if err != nil && strings.Contains(err.Error(), "UNIQUE") {
		return nil, validation("Cannot create already existing endpoint configuration %q.", arn)
	}
	if err != nil {
		return nil, err
	}
	s.putTags(ctx, arn, req.Tags)
	return map[string]string{"EndpointConfigArn": arn}, nil
}

func (s *Service) loadEndpointConfig(ctx context.Context, name string) (*CreateEndpointConfigRequest, stored, error) {
	return loadStored[CreateEndpointConfigRequest](ctx, s, "sm_endpoint_configs", name,
		validation("Could not find endpoint configuration %q.", s.endpointConfigARN(name)))
}

func (s *Service) describeEndpointConfig(r *http.Request, p *iam.Principal, body []byte) (any, error) {
	var req struct{ EndpointConfigName string }
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	if err := s.iam.Authorize(r.Context(), p, "sagemaker:DescribeEndpointConfig", s.endpointConfigARN(req.EndpointConfigName), nil); err != nil {
		return nil, err
	}
	_, st, err := s.loadEndpointConfig(r.Context(), req.EndpointConfigName)
	if err != nil {
		return nil, err
	}
	return describeOf(st.raw, map[string]any{"EndpointConfigArn": st.arn, "CreationTime": epoch(st.created)}), nil
}

func (s *Service) deleteEndpointConfig(r *http.Request, p *iam.Principal, body []byte) (any, error) {
	var req struct{ EndpointConfigName string }
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	if err := s.iam.Authorize(r.Context(), p, "sagemaker:DeleteEndpointConfig", s.endpointConfigARN(req.EndpointConfigName), nil); err != nil {
		return nil, err
	}
	return s.deleteRecord(r.Context(), "sm_endpoint_configs", req.EndpointConfigName, "endpoint configuration")
}

func (s *Service) listEndpointConfigs(r *http.Request, p *iam.Principal, body []byte) (any, error) {
	return s.listStored(r, p, body, "sagemaker:ListEndpointConfigs", "sm_endpoint_configs", "EndpointConfig", "EndpointConfigs")
}
