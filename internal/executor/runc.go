package executor

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// runc runs one runc command against convoy's own runc state directory.
type runc struct {
	path string // the binary
	root string // --root: container state, owned by this stateDir only
}

func (r runc) command(args ...string) *exec.Cmd {
	return exec.Command(r.path, append([]string{"--root", r.root}, args...)...)
}

// do runs a short runc command and returns its error with runc's message.
func (r runc) do(ctx context.Context, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, r.path, append([]string{"--root", r.root}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return &runcError{args: args, msg: strings.TrimSpace(string(out)), err: err}
	}
	return nil
}

type runcError struct {
	args []string
	msg  string
	err  error
}

func (e *runcError) Error() string {
	return fmt.Sprintf("runc %s: %v: %s", strings.Join(e.args, " "), e.err, e.msg)
}

func (e *runcError) Unwrap() error { return e.err }

// isGone reports whether a runc error only says that the container has
// already exited or was never created.
func isGone(err error) bool {
	var re *runcError
	if !errors.As(err, &re) {
		return false
	}
	return strings.Contains(re.msg, "does not exist") || strings.Contains(re.msg, "not running") ||
		strings.Contains(re.msg, "container not found") || strings.Contains(re.msg, "process already finished")
}

// kill sends sig to the container's init; a container that is gone is fine.
func (r runc) kill(ctx context.Context, id string, sig int) error {
	if err := r.do(ctx, "kill", id, fmt.Sprint(sig)); err != nil && !isGone(err) {
		return err
	}
	return nil
}

// forceDelete kills and deletes a container if runc still knows it.
func (r runc) forceDelete(ctx context.Context, id string) error {
	if _, err := os.Stat(r.root + "/" + id); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := r.do(ctx, "delete", "--force", id); err != nil && !isGone(err) {
		return err
	}
	return nil
}

// list returns the ids of the containers in convoy's runc state directory.
func (r runc) list(ctx context.Context) ([]string, error) {
	entries, err := os.ReadDir(r.root)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, e := range entries {
		if e.IsDir() {
			ids = append(ids, e.Name())
		}
	}
	return ids, nil
}

// lastError returns the last error runc wrote to its JSON log, if any.
func lastError(logPath string) string {
	data, err := os.ReadFile(logPath)
	if err != nil {
		return ""
	}
	var last string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		var e struct{ Level, Msg string }
		if json.Unmarshal(sc.Bytes(), &e) == nil && (e.Level == "error" || e.Level == "fatal") {
			last = e.Msg
		}
	}
	return last
}
