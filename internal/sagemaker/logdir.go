package sagemaker

import (
	"os"
	"path/filepath"
	"strings"
)

// JobLogDirs is the Dir of a LocalRunner, seen from the jobs' logs: each
// job keeps Dir/<lowercase name>/logs/<host>.log after it ends. Its LogDir
// method serves the logs API and convoy logs, which read those files.
type JobLogDirs string

// LogDir returns the log directory of the job named name, and whether it
// exists. A name SageMaker would refuse finds nothing, so a name never
// reaches outside the jobs directory.
func (d JobLogDirs) LogDir(name string) (string, bool) {
	if !jobNameRE.MatchString(name) {
		return "", false
	}
	dir := filepath.Join(string(d), strings.ToLower(name), "logs")
	fi, err := os.Stat(dir)
	return dir, err == nil && fi.IsDir()
}
