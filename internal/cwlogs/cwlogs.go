// Package cwlogs serves the part of the CloudWatch Logs API (awsJson1_1,
// X-Amz-Target Logs_20140328.<Op>) that reads SageMaker containers' logs:
// DescribeLogStreams, GetLogEvents and FilterLogEvents on the log group
// /aws/sagemaker/TrainingJobs and on the groups of Sources (endpoints'
// /aws/sagemaker/Endpoints/<name>). It stores nothing: events are the lines
// of the raw container logs left on disk (one event a line), found through
// LogDirs and the Sources. Written by hand because it is a few hundred lines over
// plain files; no library serves the CloudWatch Logs wire protocol.
//
// Streams are named "<TrainingJobName>/<host>-1", e.g. "my-job/algo-1-1":
// SageMaker's names end in the instance's start epoch, which convoy does not
// keep, so the suffix is the constant 1 and the name stays the same across
// calls and restarts.
//
// The raw logs carry no timestamps. Every event of a stream gets the log
// file's modification time (its last write) as timestamp and ingestion time;
// events keep their order by position in the file, which is what the paging
// tokens count. startTime and endTime therefore select a stream's events all
// or none.
package cwlogs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"

	"convoy/internal/awsproto"
	"convoy/internal/iam"
)

// Group is the log group of SageMaker training jobs. Other groups
// (endpoints') are served from the Sources added with AddSource.
const Group = "/aws/sagemaker/TrainingJobs"

// Source serves the log groups whose names start with a prefix: each
// stream is a file of raw lines, as a training host's log is.
type Source interface {
	// Group reports whether the log group exists.
	Group(group string) bool
	// Stream returns the file of the named stream of group, and whether
	// there is one.
	Stream(group, stream string) (path string, ok bool)
	// Streams lists the streams of group whose names start with prefix.
	Streams(group, prefix string) ([]StreamFile, error)
}

// StreamFile is a stream's name and file.
type StreamFile struct{ Name, Path string }

type source struct {
	prefix string
	src    Source
}

// LogDirs finds a training job's log directory (holding <host>.log per
// host) from the job's name; ok is false when the job left no logs.
type LogDirs interface {
	LogDir(job string) (dir string, ok bool)
}

// Authorizer decides whether a principal may act on a resource (iam.Store).
type Authorizer interface {
	Authorize(ctx context.Context, p *iam.Principal, action, resource string, cond map[string][]string) error
}

// Service serves the logs API.
type Service struct {
	iam     Authorizer
	region  string
	account string
	dirs    LogDirs
	sources []source
	log     *slog.Logger
}

// AddSource serves the log groups starting with prefix from src. Call it
// before serving requests.
func (s *Service) AddSource(prefix string, src Source) {
	s.sources = append(s.sources, source{prefix, src})
}

// sourceOf returns the Source of a group other than Group, or nil.
func (s *Service) sourceOf(group string) Source {
	for _, src := range s.sources {
		if strings.HasPrefix(group, src.prefix) && src.src.Group(group) {
			return src.src
		}
	}
	return nil
}

// New returns the logs API over the job logs dirs finds.
func New(ids Authorizer, account, region string, dirs LogDirs, log *slog.Logger) *Service {
	return &Service{iam: ids, account: account, region: region, dirs: dirs, log: log}
}

const (
	maxBody       = 1 << 20
	maxEvents     = 10000   // GetLogEvents' and FilterLogEvents' limit cap
	maxPageBytes  = 1 << 20 // CloudWatch returns at most 1 MB of events
	maxStreams    = 50      // DescribeLogStreams' limit cap
	maxNamedCount = 100     // FilterLogEvents' logStreamNames cap
)

// ServeHTTP serves Logs_20140328.* operations.
func (s *Service) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	op := strings.TrimPrefix(r.Header.Get("X-Amz-Target"), "Logs_20140328.")
	p := iam.PrincipalFrom(r.Context())
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody))
	if err != nil {
		awsproto.WriteError(w, r, awsproto.JSON, awsproto.Errorf(http.StatusBadRequest, "SerializationException", "read request: %v", err))
		return
	}
	var out any
	switch op {
	case "DescribeLogStreams":
		out, err = s.describeLogStreams(r, p, body)
	case "GetLogEvents":
		out, err = s.getLogEvents(r, p, body)
	case "FilterLogEvents":
		out, err = s.filterLogEvents(r, p, body)
	default:
		err = awsproto.Errorf(http.StatusBadRequest, "UnknownOperationException", "operation Logs_20140328.%s is not supported by this convoy", op)
	}
	if err != nil {
		var ae *awsproto.Error
		if !errors.As(err, &ae) {
			s.log.Error("logs operation failed", "op", op, "err", err)
			ae = awsproto.Errorf(http.StatusInternalServerError, "ServiceUnavailableException", "internal error; request ID %s", awsproto.RequestID(r.Context()))
		}
		awsproto.WriteError(w, r, awsproto.JSON, ae)
		return
	}
	awsproto.WriteJSON(w, out)
}

func decode(body []byte, v any) error { return awsproto.DecodeJSON(body, v) }

func invalid(format string, args ...any) error {
	return awsproto.Errorf(http.StatusBadRequest, "InvalidParameterException", format, args...)
}

func notFound(format string, args ...any) error {
	return awsproto.Errorf(http.StatusBadRequest, "ResourceNotFoundException", format, args...)
}

func (s *Service) groupARN(group string) string {
	return fmt.Sprintf("arn:aws:logs:%s:%s:log-group:%s:*", s.region, s.account, group)
}

func (s *Service) streamARN(group, stream string) string {
	return fmt.Sprintf("arn:aws:logs:%s:%s:log-group:%s:log-stream:%s", s.region, s.account, group, stream)
}

// authorize checks action on group before anything tells whether the group
// or its streams exist.
func (s *Service) authorize(r *http.Request, p *iam.Principal, action, group string) error {
	if group == "" {
		return invalid("logGroupName is required")
	}
	if err := s.iam.Authorize(r.Context(), p, action, s.groupARN(group), nil); err != nil {
		return err
	}
	if group != Group && s.sourceOf(group) == nil {
		return notFound("The specified log group does not exist.")
	}
	return nil
}

// limit checks a request's limit against [1, max]; 0 means max.
func limit(n, max int) (int, error) {
	switch {
	case n == 0:
		return max, nil
	case n < 1 || n > max:
		return 0, invalid("limit must be between 1 and %d", max)
	}
	return n, nil
}
