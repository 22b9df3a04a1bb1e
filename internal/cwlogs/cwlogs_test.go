package cwlogs

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"convoy/internal/awsproto"
	"convoy/internal/iam"
	"convoy/internal/iam/iamtest"
)

// dirs finds jobs in a map, as sagemaker.JobLogDirs finds them on disk.
type dirs map[string]string

func (d dirs) LogDir(job string) (string, bool) { dir, ok := d[job]; return dir, ok }

type env struct {
	logs       string // the log directory of job "Job"
	t          *testing.T
	svc        *Service
	admin, dev *iam.Principal
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx := context.Background()
	_, _, ids := iamtest.Open(t)
	admin := iamtest.Admin(t, ids)
	if _, err := ids.CreateUser(ctx, "dev", ""); err != nil {
		t.Fatal(err)
	}
	k, _, _ := ids.CreateAccessKey(ctx, "dev")
	dev, _ := ids.UserPrincipal(ctx, "dev", k.ID)

	logs := t.TempDir()
	var one, two []string
	for i := range 25 {
		one = append(one, fmt.Sprintf("line %d", i))
	}
	for i := range 3 {
		two = append(two, fmt.Sprintf("second host %d", i))
	}
	write := func(name, content string) {
		if err := os.WriteFile(filepath.Join(logs, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("algo-1.log", strings.Join(one, "\n")+"\n")
	write("algo-2.log", strings.Join(two, "\r\n")) // no final line end
	write("notes.txt", "not a host log")
	svc := New(ids, ids.AccountID(), "us-east-1", dirs{"Job": logs}, slog.New(slog.DiscardHandler))
	return &env{t: t, svc: svc, admin: admin, dev: dev, logs: logs}
}

func (e *env) call(op string, body any, p *iam.Principal) (int, map[string]any) {
	e.t.Helper()
	raw, _ := json.Marshal(body)
	r := httptest.NewRequest("POST", "/", bytes.NewReader(raw))
	r.Header.Set("X-Amz-Target", "Logs_20140328."+op)
	ctx, _ := awsproto.WithRequestID(r.Context())
	r = r.WithContext(iam.WithPrincipal(ctx, p))
	w := httptest.NewRecorder()
	e.svc.ServeHTTP(w, r)
	out := map[string]any{}
	b, _ := io.ReadAll(w.Body)
	if err := json.Unmarshal(b, &out); err != nil {
		e.t.Fatalf("%s: response %q: %v", op, b, err)
	}
	return w.Code, out
}

func messages(out map[string]any) []string {
	var m []string
	for _, ev := range out["events"].([]any) {
		m = append(m, ev.(map[string]any)["message"].(string))
	}
	return m
}

func lines(from, to int) []string {
	var m []string
	for i := from; i < to; i++ {
		m = append(m, fmt.Sprintf("line %d", i))
	}
	return m
}

func eq(a, b []string) bool {
	return strings.Join(a, "\n") == strings.Join(b, "\n") && len(a) == len(b)
}

func TestGetLogEventsPaging(t *testing.T) {
	e := newEnv(t)
	get := func(extra map[string]any) map[string]any {
		t.Helper()
		req := map[string]any{"logGroupName": Group, "logStreamName": "Job/algo-1-1"}
		for k, v := range extra {
			req[k] = v
		}
		code, out := e.call("GetLogEvents", req, e.admin)
		if code != 200 {
			t.Fatalf("GetLogEvents %v: %d %v", extra, code, out)
		}
		return out
	}

	out := get(nil)
	if !eq(messages(out), lines(0, 25)) {
		t.Fatalf("all events: %q", messages(out))
	}
	ev := out["events"].([]any)[0].(map[string]any)
	if ev["timestamp"].(float64) <= 0 || ev["ingestionTime"] != ev["timestamp"] {
		t.Errorf("event times: %v", ev)
	}

	// From the head, 10 at a time, until the forward token repeats.
	var got []string
	token := ""
	for range 10 {
		req := map[string]any{"startFromHead": true, "limit": 10}
		if token != "" {
			req["nextToken"] = token
		}
		out := get(req)
		got = append(got, messages(out)...)
		next := out["nextForwardToken"].(string)
		if next == token {
			break
		}
		token = next
	}
	if !eq(got, lines(0, 25)) {
		t.Fatalf("forward pages: %q", got)
	}

	// From the tail, backwards.
	out = get(map[string]any{"limit": 10})
	if !eq(messages(out), lines(15, 25)) {
		t.Fatalf("last page: %q", messages(out))
	}
	out = get(map[string]any{"limit": 10, "nextToken": out["nextBackwardToken"]})
	if !eq(messages(out), lines(5, 15)) {
		t.Fatalf("page before: %q", messages(out))
	}
	out = get(map[string]any{"limit": 10, "nextToken": out["nextBackwardToken"]})
	if !eq(messages(out), lines(0, 5)) {
		t.Fatalf("first page: %q", messages(out))
	}
	// And forward again from there.
	out = get(map[string]any{"limit": 3, "nextToken": out["nextForwardToken"]})
	if !eq(messages(out), lines(5, 8)) {
		t.Fatalf("forward after backward: %q", messages(out))
	}

	// The second host's lines end in \r\n and the last has no line end.
	code, out := e.call("GetLogEvents", map[string]any{"logGroupName": Group, "logStreamName": "Job/algo-2-1", "startFromHead": true}, e.admin)
	if code != 200 || !eq(messages(out), []string{"second host 0", "second host 1", "second host 2"}) {
		t.Fatalf("algo-2: %d %q", code, messages(out))
	}
}

func TestErrors(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct {
		name, op string
		body     map[string]any
		p        *iam.Principal
		code     string
	}{
		{"unknown stream", "GetLogEvents", map[string]any{"logGroupName": Group, "logStreamName": "Job/algo-3-1"}, e.admin, "ResourceNotFoundException"},
		{"unknown job", "GetLogEvents", map[string]any{"logGroupName": Group, "logStreamName": "Other/algo-1-1"}, e.admin, "ResourceNotFoundException"},
		{"bad stream name", "GetLogEvents", map[string]any{"logGroupName": Group, "logStreamName": "Job/../../etc"}, e.admin, "ResourceNotFoundException"},
		{"unknown group", "GetLogEvents", map[string]any{"logGroupName": "/aws/lambda/x", "logStreamName": "Job/algo-1-1"}, e.admin, "ResourceNotFoundException"},
		{"bad token", "GetLogEvents", map[string]any{"logGroupName": Group, "logStreamName": "Job/algo-1-1", "nextToken": "x/1"}, e.admin, "InvalidParameterException"},
		{"bad limit", "GetLogEvents", map[string]any{"logGroupName": Group, "logStreamName": "Job/algo-1-1", "limit": 10001}, e.admin, "InvalidParameterException"},
		{"filter unknown stream", "FilterLogEvents", map[string]any{"logGroupName": Group, "logStreamNames": []string{"Job/algo-9-1"}}, e.admin, "ResourceNotFoundException"},
		{"filter whole group", "FilterLogEvents", map[string]any{"logGroupName": Group}, e.admin, "InvalidParameterException"},
		{"get denied", "GetLogEvents", map[string]any{"logGroupName": Group, "logStreamName": "Job/algo-1-1"}, e.dev, "AccessDeniedException"},
		{"get denied, unknown stream", "GetLogEvents", map[string]any{"logGroupName": Group, "logStreamName": "Nope/algo-1-1"}, e.dev, "AccessDeniedException"},
		{"describe denied", "DescribeLogStreams", map[string]any{"logGroupName": Group, "logStreamNamePrefix": "Job/"}, e.dev, "AccessDeniedException"},
		{"filter denied", "FilterLogEvents", map[string]any{"logGroupName": Group, "logStreamNamePrefix": "Job/"}, e.dev, "AccessDeniedException"},
		{"unknown operation", "PutLogEvents", map[string]any{}, e.admin, "UnknownOperationException"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out := e.call(tc.op, tc.body, tc.p)
			if code < 400 || out["__type"] != tc.code {
				t.Fatalf("%d %v, want %s", code, out, tc.code)
			}
		})
	}
}

func TestDescribeLogStreams(t *testing.T) {
	e := newEnv(t)
	names := func(out map[string]any) []string {
		var n []string
		for _, s := range out["logStreams"].([]any) {
			n = append(n, s.(map[string]any)["logStreamName"].(string))
		}
		return n
	}
	for _, tc := range []struct {
		prefix string
		want   []string
	}{
		{"Job/", []string{"Job/algo-1-1", "Job/algo-2-1"}},
		{"Job", []string{"Job/algo-1-1", "Job/algo-2-1"}},
		{"Job/algo-2", []string{"Job/algo-2-1"}},
		{"Jo", nil},
		{"Other/", nil},
	} {
		code, out := e.call("DescribeLogStreams", map[string]any{"logGroupName": Group, "logStreamNamePrefix": tc.prefix}, e.admin)
		if code != 200 || !eq(names(out), tc.want) {
			t.Errorf("prefix %q: %d %v, want %q", tc.prefix, code, out, tc.want)
		}
	}
	code, out := e.call("DescribeLogStreams", map[string]any{"logGroupName": Group, "logStreamNamePrefix": "Job/", "limit": 1, "descending": true}, e.admin)
	if code != 200 || !eq(names(out), []string{"Job/algo-2-1"}) || out["nextToken"] != "1" {
		t.Fatalf("first page: %d %v", code, out)
	}
	_, out = e.call("DescribeLogStreams", map[string]any{"logGroupName": Group, "logStreamNamePrefix": "Job/", "limit": 1, "descending": true, "nextToken": "1"}, e.admin)
	if !eq(names(out), []string{"Job/algo-1-1"}) || out["nextToken"] != nil {
		t.Fatalf("second page: %v", out)
	}
	s := out["logStreams"].([]any)[0].(map[string]any)
	if !strings.HasSuffix(s["arn"].(string), ":log-group:/aws/sagemaker/TrainingJobs:log-stream:Job/algo-1-1") || s["lastEventTimestamp"] == nil {
		t.Errorf("stream: %v", s)
	}
}

func TestFilterLogEvents(t *testing.T) {
	e := newEnv(t)
	filter := func(req map[string]any) map[string]any {
		t.Helper()
		req["logGroupName"] = Group
		code, out := e.call("FilterLogEvents", req, e.admin)
		if code != 200 {
			t.Fatalf("FilterLogEvents %v: %d %v", req, code, out)
		}
		return out
	}
	out := filter(map[string]any{"logStreamNamePrefix": "Job/", "filterPattern": "2"})
	want := []string{"line 2", "line 12", "line 20", "line 21", "line 22", "line 23", "line 24", "second host 2"}
	if !eq(messages(out), want) || out["nextToken"] != nil {
		t.Fatalf("filter 2: %q %v", messages(out), out["nextToken"])
	}
	if ev := out["events"].([]any)[7].(map[string]any); ev["logStreamName"] != "Job/algo-2-1" || ev["eventId"] == "" {
		t.Errorf("event: %v", ev)
	}

	out = filter(map[string]any{"logStreamNames": []string{"Job/algo-2-1"}, "filterPattern": `"host 1"`})
	if !eq(messages(out), []string{"second host 1"}) {
		t.Fatalf("quoted pattern: %q", messages(out))
	}

	// Paging across the two streams, 4 events a page.
	var got []string
	req := map[string]any{"logStreamNamePrefix": "Job/", "limit": 4}
	for range 20 {
		out := filter(req)
		got = append(got, messages(out)...)
		tok, ok := out["nextToken"]
		if !ok {
			break
		}
		req["nextToken"] = tok
	}
	want = append(lines(0, 25), "second host 0", "second host 1", "second host 2")
	if !eq(got, want) {
		t.Fatalf("pages: %q", got)
	}

	// Out of the time window: nothing.
	out = filter(map[string]any{"logStreamNamePrefix": "Job/", "endTime": time.Now().Add(-time.Hour).UnixMilli()})
	if len(out["events"].([]any)) != 0 {
		t.Fatalf("old window: %q", messages(out))
	}
}

func TestPrint(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "algo-1.log"), []byte("a\nb\n"), 0o600)
	var out bytes.Buffer
	if err := Print(context.Background(), &out, dir, "", false, time.Millisecond); err != nil || out.String() != "a\nb\n" {
		t.Fatalf("one host: %q %v", out.String(), err)
	}
	os.WriteFile(filepath.Join(dir, "algo-2.log"), []byte("c"), 0o600)
	out.Reset()
	if err := Print(context.Background(), &out, dir, "", false, time.Millisecond); err != nil || out.String() != "algo-1 | a\nalgo-1 | b\nalgo-2 | c\n" {
		t.Fatalf("two hosts: %q %v", out.String(), err)
	}
	out.Reset()
	if err := Print(context.Background(), &out, dir, "algo-2", false, time.Millisecond); err != nil || out.String() != "c\n" {
		t.Fatalf("one of two: %q %v", out.String(), err)
	}
	if err := Print(context.Background(), &out, dir, "algo-3", false, time.Millisecond); err == nil {
		t.Fatal("unknown host: no error")
	}

	// Follow prints lines as they are finished, and stops with ctx.
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- Print(ctx, pw, dir, "algo-1", true, time.Millisecond) }()
	buf := make([]byte, 64)
	read := func(want string) {
		t.Helper()
		n, err := io.ReadAtLeast(pr, buf, len(want))
		if err != nil || string(buf[:n]) != want {
			t.Fatalf("followed %q %v, want %q", buf[:n], err, want)
		}
	}
	read("a\nb\n")
	f, _ := os.OpenFile(filepath.Join(dir, "algo-1.log"), os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("par")
	f.WriteString("tial\n")
	f.Close()
	read("partial\n")
	cancel()
	go io.Copy(io.Discard, pr)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// groupSource is a Source of one group whose streams are files in a map.
type groupSource struct {
	group string
	files map[string]string // stream name → path
}

func (g groupSource) Group(group string) bool { return group == g.group }

func (g groupSource) Stream(group, stream string) (string, bool) {
	p, ok := g.files[stream]
	return p, ok && group == g.group
}

func (g groupSource) Streams(group, prefix string) ([]StreamFile, error) {
	var out []StreamFile
	for name, p := range g.files {
		if strings.HasPrefix(name, prefix) {
			out = append(out, StreamFile{Name: name, Path: p})
		}
	}
	return out, nil
}

func TestSource(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	for name, content := range map[string]string{"a.log": "serving\nping ok\n", "b.log": "other\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	const group = "/aws/sagemaker/Endpoints/ep"
	e.svc.AddSource("/aws/sagemaker/Endpoints/", groupSource{group: group, files: map[string]string{
		"AllTraffic/i-1": filepath.Join(dir, "a.log"), "Canary/i-2": filepath.Join(dir, "b.log")}})

	code, out := e.call("DescribeLogStreams", map[string]any{"logGroupName": group}, e.admin)
	streams, _ := out["logStreams"].([]any)
	if code != 200 || len(streams) != 2 || streams[0].(map[string]any)["logStreamName"] != "AllTraffic/i-1" ||
		!strings.HasSuffix(streams[0].(map[string]any)["arn"].(string), ":log-group:"+group+":log-stream:AllTraffic/i-1") {
		t.Fatalf("describe: %d %v", code, out)
	}
	code, out = e.call("GetLogEvents", map[string]any{"logGroupName": group, "logStreamName": "AllTraffic/i-1", "startFromHead": true}, e.admin)
	if code != 200 || !eq(messages(out), []string{"serving", "ping ok"}) {
		t.Fatalf("get: %d %v", code, out)
	}
	code, out = e.call("FilterLogEvents", map[string]any{"logGroupName": group, "filterPattern": "other"}, e.admin)
	if code != 200 || !eq(messages(out), []string{"other"}) {
		t.Fatalf("filter the whole group: %d %v", code, out)
	}
	for _, tc := range []struct {
		op   string
		body map[string]any
		code string
	}{
		{"GetLogEvents", map[string]any{"logGroupName": "/aws/sagemaker/Endpoints/nope", "logStreamName": "AllTraffic/i-1"}, "ResourceNotFoundException"},
		{"GetLogEvents", map[string]any{"logGroupName": group, "logStreamName": "AllTraffic/i-9"}, "ResourceNotFoundException"},
		{"GetLogEvents", map[string]any{"logGroupName": group, "logStreamName": "AllTraffic/i-1"}, "AccessDeniedException"},
	} {
		p := e.admin
		if tc.code == "AccessDeniedException" {
			p = e.dev
		}
		if code, out := e.call(tc.op, tc.body, p); code == 200 || out["__type"] != tc.code {
			t.Errorf("%s %v: %d %v, want %s", tc.op, tc.body, code, out, tc.code)
		}
	}
}

// A page holds at most 1 MB of events (and at least one), the events
// nearest where reading started, forward and backward; the tokens continue
// from there.
func TestGetLogEventsPageBytes(t *testing.T) {
	e := newEnv(t)
	var ls []string
	for i := range 10 {
		ls = append(ls, fmt.Sprintf("%d", i)+strings.Repeat("x", 300<<10))
	}
	if err := os.WriteFile(filepath.Join(e.logs, "algo-3.log"), []byte(strings.Join(ls, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	get := func(extra map[string]any) ([]string, map[string]any) {
		t.Helper()
		req := map[string]any{"logGroupName": Group, "logStreamName": "Job/algo-3-1"}
		for k, v := range extra {
			req[k] = v
		}
		code, out := e.call("GetLogEvents", req, e.admin)
		if code != 200 {
			t.Fatalf("GetLogEvents %v: %d %v", extra, code, out)
		}
		var first []string
		for _, m := range messages(out) {
			first = append(first, m[:1])
		}
		return first, out
	}
	// 300 KiB events: three fit in 1 MB, four do not.
	got, out := get(map[string]any{"startFromHead": true})
	if strings.Join(got, "") != "012" || out["nextForwardToken"] != "f/3" {
		t.Fatalf("first page forward: %v, next %v", got, out["nextForwardToken"])
	}
	if got, _ = get(map[string]any{"nextToken": "f/3"}); strings.Join(got, "") != "345" {
		t.Errorf("second page forward: %v", got)
	}
	got, out = get(nil) // from the end, backward
	if strings.Join(got, "") != "789" || out["nextBackwardToken"] != "b/7" {
		t.Fatalf("last page: %v, previous %v", got, out["nextBackwardToken"])
	}
	if got, _ = get(map[string]any{"nextToken": "b/7"}); strings.Join(got, "") != "456" {
		t.Errorf("page before it: %v", got)
	}
}
