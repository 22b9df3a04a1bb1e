package logbuf

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

type syncBuf struct {
	mu     sync.Mutex
	b      bytes.Buffer
	writes int
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writes++
	return s.b.Write(p)
}

func (s *syncBuf) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// Lines from many goroutines arrive whole, in fewer writes than lines, and
// a line written alone appears within a bounded time (polled, no
// threshold on how fast).
func TestLinesWholeAndBatched(t *testing.T) {
	out := &syncBuf{}
	w := New(out)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 2000 {
				fmt.Fprintf(w, "g=%d i=%d %s\n", g, i, strings.Repeat("x", i%50))
			}
		}()
	}
	wg.Wait()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 16000 {
		t.Fatalf("%d lines, want 16000", len(lines))
	}
	next := map[string]int{}
	for _, l := range lines {
		var g, i int
		var x string
		if _, err := fmt.Sscanf(l, "g=%d i=%d %s", &g, &i, &x); err != nil && i%50 != 0 {
			t.Fatalf("broken line %q", l)
		}
		key := fmt.Sprint(g)
		if i != next[key] {
			t.Fatalf("goroutine %d: line %d after %d: reordered", g, i, next[key]-1)
		}
		next[key]++
	}
	if out.writes >= 16000/10 {
		t.Fatalf("%d writes for 16000 lines: not batched", out.writes)
	}

	out2 := &syncBuf{}
	w2 := New(out2)
	w2.Write([]byte("alone\n"))
	for range 500 { // the timer flushes it; wait up to 5 s
		if out2.String() == "alone\n" {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("a lone line was never written")
}
