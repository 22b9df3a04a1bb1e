package cwlogs

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// hostRE is a training host's name (executor.HostName).
var hostRE = regexp.MustCompile(`^algo-([1-9][0-9]{0,3})$`)

// StreamName is the name of host's log stream for job.
func StreamName(job, host string) string { return job + "/" + host + "-1" }

// parseStream splits a stream name into job and host.
func parseStream(name string) (job, host string, ok bool) {
	job, rest, ok := strings.Cut(name, "/")
	host, found := strings.CutSuffix(rest, "-1")
	if !ok || job == "" || !found || !hostRE.MatchString(host) {
		return "", "", false
	}
	return job, host, true
}

// stream is one host log.
type stream struct {
	name, path string
	size       int64
	mtime      int64 // milliseconds since the epoch
}

// Hosts lists the hosts that have a log in dir, in host order.
func Hosts(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var hosts []string
	for _, e := range entries {
		h, ok := strings.CutSuffix(e.Name(), ".log")
		if ok && e.Type().IsRegular() && hostRE.MatchString(h) {
			hosts = append(hosts, h)
		}
	}
	sort.Slice(hosts, func(i, j int) bool { return hostNumber(hosts[i]) < hostNumber(hosts[j]) })
	return hosts, nil
}

func hostNumber(h string) int {
	n, _ := strconv.Atoi(hostRE.FindStringSubmatch(h)[1])
	return n
}

// open finds the stream named name of group; ok is false when there is
// none.
func (s *Service) open(group, name string) (stream, bool, error) {
	if src := s.sourceOf(group); src != nil {
		path, ok := src.Stream(group, name)
		if !ok {
			return stream{}, false, nil
		}
		return statStream(name, path)
	}
	job, host, ok := parseStream(name)
	if !ok {
		return stream{}, false, nil
	}
	dir, ok := s.dirs.LogDir(job)
	if !ok {
		return stream{}, false, nil
	}
	return statStream(name, filepath.Join(dir, host+".log"))
}

// statStream finds the stream name at path. Only a regular file is a
// stream: a symbolic link planted where a log belongs is not followed to
// what it names (eachLine opens with O_NOFOLLOW too).
func statStream(name, path string) (stream, bool, error) {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) || (err == nil && !fi.Mode().IsRegular()) {
		return stream{}, false, nil
	}
	if err != nil {
		return stream{}, false, err
	}
	return stream{name: name, path: path, size: fi.Size(), mtime: fi.ModTime().UnixMilli()}, true, nil
}

// withPrefix lists the streams of group whose names start with prefix, in
// name order. For training jobs the prefix must start with a whole job
// name: convoy finds logs by job, it does not list every job's.
func (s *Service) withPrefix(group, prefix string) ([]stream, error) {
	if src := s.sourceOf(group); src != nil {
		files, err := src.Streams(group, prefix)
		if err != nil {
			return nil, err
		}
		var out []stream
		for _, f := range files {
			st, ok, err := statStream(f.Name, f.Path)
			if err != nil {
				return nil, err
			}
			if ok {
				out = append(out, st)
			}
		}
		sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
		return out, nil
	}
	job, _, _ := strings.Cut(prefix, "/")
	dir, ok := s.dirs.LogDir(job)
	if job == "" || !ok {
		return nil, nil
	}
	hosts, err := Hosts(dir)
	if err != nil {
		return nil, err
	}
	var out []stream
	for _, h := range hosts {
		name := StreamName(job, h)
		if !strings.HasPrefix(name, prefix) {
			continue
		}
		st, ok, err := statStream(name, filepath.Join(dir, h+".log"))
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, st)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out, nil
}

// maxEventBytes bounds one event's message as CloudWatch does (256 KB);
// the rest of a longer line is dropped.
const maxEventBytes = 256 * 1024

// eachLine calls fn with each line of the file at path (without its line
// end) and its index, until fn returns false; n is the count of lines
// passed to fn. A last line without a line end counts as a line.
func eachLine(path string, fn func(i int, line string) bool) (n int, err error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 64*1024)
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		if len(line) < maxEventBytes {
			line = append(line, chunk[:min(len(chunk), maxEventBytes-len(line))]...)
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return n, err
		}
		if len(chunk) > 0 || len(line) > 0 {
			more := fn(n, string(bytes.TrimRight(line, "\r\n")))
			n++
			if !more {
				return n, nil
			}
		}
		if err != nil {
			return n, nil
		}
		line = line[:0]
	}
}
