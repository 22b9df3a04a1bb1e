package sagemaker

import (
	"os"
	"path/filepath"
	"strings"

	"convoy/internal/cwlogs"
)

// TransformLogs is the Dir of the transform jobs' LocalModelHost seen from
// their logs: a cwlogs.Source for the group TransformLogGroup, whose
// streams <job name>/<instance> are the files
// Dir/<lower-case job name>/logs/<job name>/<instance>/algo-1.log. Logs
// outlive their job, as CloudWatch's do. Names SageMaker would refuse find
// nothing, so no name reaches outside Dir.
type TransformLogs string

var _ cwlogs.Source = TransformLogs("")

// Group implements cwlogs.Source.
func (d TransformLogs) Group(group string) bool {
	fi, err := os.Stat(string(d))
	return group == TransformLogGroup && err == nil && fi.IsDir()
}

// Stream implements cwlogs.Source.
func (d TransformLogs) Stream(group, stream string) (string, bool) {
	job, instance, found := strings.Cut(stream, "/")
	if group != TransformLogGroup || !found || !jobNameRE.MatchString(job) || !instanceRE.MatchString(instance) {
		return "", false
	}
	return filepath.Join(string(d), lower(job), "logs", job, instance, "algo-1.log"), true
}

// Streams implements cwlogs.Source.
func (d TransformLogs) Streams(group, prefix string) ([]cwlogs.StreamFile, error) {
	if group != TransformLogGroup {
		return nil, nil
	}
	jobs, err := os.ReadDir(string(d))
	if err != nil {
		return nil, err
	}
	var out []cwlogs.StreamFile
	for _, j := range jobs {
		logs := filepath.Join(string(d), j.Name(), "logs")
		names, _ := os.ReadDir(logs) // a job that never started has none
		for _, n := range names {
			if !n.IsDir() || !jobNameRE.MatchString(n.Name()) || lower(n.Name()) != j.Name() {
				continue
			}
			instances, err := os.ReadDir(filepath.Join(logs, n.Name()))
			if err != nil {
				return nil, err
			}
			for _, in := range instances {
				name := n.Name() + "/" + in.Name()
				if in.IsDir() && instanceRE.MatchString(in.Name()) && strings.HasPrefix(name, prefix) {
					out = append(out, cwlogs.StreamFile{Name: name, Path: filepath.Join(logs, n.Name(), in.Name(), "algo-1.log")})
				}
			}
		}
	}
	return out, nil
}
