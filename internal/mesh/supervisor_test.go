package mesh

import (
	"encoding/json"
	"log/slog"
	"testing"
)

func TestParseLogLine(t *testing.T) {
	level, msg, attrs := parseLogLine([]byte(`{"time":"t","level":"WARN","msg":"refused a tunnel","job":"j","host":"algo-1","from":"10.0.0.9","bytes":4085777829}`))
	if level != slog.LevelWarn || msg != "refused a tunnel" || len(attrs) != 2 {
		t.Fatalf("%v %q %v", level, msg, attrs)
	}
	if a := attrs[0].(slog.Attr); a.Key != "bytes" || a.Value.Any().(json.Number).String() != "4085777829" {
		t.Fatalf("bytes attribute: %v", a)
	}
	if level, msg, attrs := parseLogLine([]byte("panic: something\n")); level != slog.LevelWarn || msg != "panic: something" || attrs != nil {
		t.Fatalf("text line: %v %q %v", level, msg, attrs)
	}
}
