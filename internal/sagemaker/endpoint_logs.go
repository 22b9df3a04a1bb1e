package sagemaker

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"convoy/internal/cwlogs"
	"convoy/internal/runtime"
)

// EndpointLogs is the Dir of a LocalModelHost seen from the endpoints'
// logs: a cwlogs.Source for the groups /aws/sagemaker/Endpoints/<name>,
// whose streams <VariantName>/<instance> are the files
// Dir/<name>/logs/<VariantName>/<instance>/algo-1.log. Logs outlive their
// endpoint, as CloudWatch log groups do. Names SageMaker would refuse find
// nothing, so no name reaches outside Dir.
type EndpointLogs string

var _ cwlogs.Source = EndpointLogs("")

// EndpointLogGroupPrefix starts the name of every endpoint's log group.
const EndpointLogGroupPrefix = "/aws/sagemaker/Endpoints/"

var instanceRE = regexp.MustCompile(`^i-[0-9a-f]{16}$`)

func (d EndpointLogs) logsDir(group string) (string, bool) {
	name, ok := strings.CutPrefix(group, EndpointLogGroupPrefix)
	if !ok || !jobNameRE.MatchString(name) || runtime.LogGroup(name) != group {
		return "", false
	}
	dir := filepath.Join(string(d), lower(name), "logs")
	fi, err := os.Stat(dir)
	return dir, err == nil && fi.IsDir()
}

// Group implements cwlogs.Source.
func (d EndpointLogs) Group(group string) bool {
	_, ok := d.logsDir(group)
	return ok
}

// Stream implements cwlogs.Source.
func (d EndpointLogs) Stream(group, stream string) (string, bool) {
	dir, ok := d.logsDir(group)
	variant, instance, found := strings.Cut(stream, "/")
	if !ok || !found || !jobNameRE.MatchString(variant) || !instanceRE.MatchString(instance) {
		return "", false
	}
	return filepath.Join(dir, variant, instance, "algo-1.log"), true
}

// Streams implements cwlogs.Source.
func (d EndpointLogs) Streams(group, prefix string) ([]cwlogs.StreamFile, error) {
	dir, ok := d.logsDir(group)
	if !ok {
		return nil, nil
	}
	variants, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []cwlogs.StreamFile
	for _, v := range variants {
		if !v.IsDir() || !jobNameRE.MatchString(v.Name()) {
			continue
		}
		instances, err := os.ReadDir(filepath.Join(dir, v.Name()))
		if err != nil {
			return nil, err
		}
		for _, in := range instances {
			name := v.Name() + "/" + in.Name()
			if in.IsDir() && instanceRE.MatchString(in.Name()) && strings.HasPrefix(name, prefix) {
				out = append(out, cwlogs.StreamFile{Name: name, Path: filepath.Join(dir, v.Name(), in.Name(), "algo-1.log")})
			}
		}
	}
	return out, nil
}
