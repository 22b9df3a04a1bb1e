package edge

import (
	"context"
	"log/slog"
)

// quietPackets is the mochi broker's log handler: mochi attaches whole
// packets ("pk", "packet") to some of its messages, payloads included, and
// telemetry does not belong in logs. Those attributes are dropped.
type quietPackets struct{ slog.Handler }

func (h quietPackets) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	r.Attrs(func(a slog.Attr) bool {
		if a.Key != "pk" && a.Key != "packet" {
			out.AddAttrs(a)
		}
		return true
	})
	return h.Handler.Handle(ctx, out)
}

func (h quietPackets) WithAttrs(as []slog.Attr) slog.Handler {
	return quietPackets{h.Handler.WithAttrs(as)}
}

func (h quietPackets) WithGroup(name string) slog.Handler {
	return quietPackets{h.Handler.WithGroup(name)}
}
