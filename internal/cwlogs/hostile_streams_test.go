package cwlogs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A host log that is a symlink (planted by anything that can write the
// job's log directory) must not make GetLogEvents or FilterLogEvents read
// the file it points to: DescribeLogStreams already hides it (Hosts keeps
// regular files only), but open() stats and opens through the link.
func TestStreamSymlinkNotFollowed(t *testing.T) {
	e := newEnv(t)
	dir := e.svc.dirs.(dirs)["Job"]
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("TOP-SECRET-HOST-FILE\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(secret, filepath.Join(dir, "algo-3.log")); err != nil {
		t.Fatal(err)
	}
	code, out := e.call("GetLogEvents", map[string]any{"logGroupName": Group, "logStreamName": "Job/algo-3-1", "startFromHead": true}, e.admin)
	if code == 200 && strings.Contains(strings.Join(messages(out), "\n"), "TOP-SECRET") {
		t.Errorf("GetLogEvents read through a symlinked host log: %v", messages(out))
	}
	code, out = e.call("FilterLogEvents", map[string]any{"logGroupName": Group, "logStreamNames": []string{"Job/algo-3-1"}}, e.admin)
	if code == 200 && strings.Contains(strings.Join(messages(out), "\n"), "TOP-SECRET") {
		t.Errorf("FilterLogEvents read through a symlinked host log: %v", messages(out))
	}
}

// Stream names and tokens that try to leave the job's log directory or
// the file find nothing and read nothing.
func TestHostileNamesAndTokens(t *testing.T) {
	e := newEnv(t)
	for _, name := range []string{
		"../Job/algo-1-1", "Job/../algo-1-1", "Job/algo-1-1/../../x", "/etc/passwd", "Job/algo-1\x00-1",
		"Job/algo-01-1", "Job/algo-0-1", "Job/algo-10000-1", "Job/" + strings.Repeat("a", 1<<16) + "-1", "Job//algo-1-1",
		"Job/algo-1-1\n", "Job/notes-1", "Job/algo-1.log",
	} {
		code, out := e.call("GetLogEvents", map[string]any{"logGroupName": Group, "logStreamName": name}, e.admin)
		if code == 200 {
			t.Errorf("stream %q: found (%v)", name, out)
		}
	}
	for _, tok := range []string{"f/-1", "b/-5", "x/1", "f/9999999999999999999999", "f/1/2", "b/", "f/+1", "f/0x10"} {
		code, out := e.call("GetLogEvents", map[string]any{"logGroupName": Group, "logStreamName": "Job/algo-1-1", "nextToken": tok}, e.admin)
		if code == 200 {
			for _, m := range messages(out) {
				if !strings.HasPrefix(m, "line ") {
					t.Errorf("token %q read %q", tok, m)
				}
			}
		}
	}
	code, out := e.call("GetLogEvents", map[string]any{"logGroupName": Group, "logStreamName": "Job/algo-1-1", "nextToken": "f/100000"}, e.admin)
	if code != 200 || len(messages(out)) != 0 {
		t.Errorf("token past the end: %d %v", code, out)
	}
	// The dev user has no logs permission: refused before any lookup.
	if code, _ := e.call("GetLogEvents", map[string]any{"logGroupName": Group, "logStreamName": "Job/algo-1-1"}, e.dev); code == 200 {
		t.Error("dev read logs without logs:GetLogEvents")
	}
}
