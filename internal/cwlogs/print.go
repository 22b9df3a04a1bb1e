package cwlogs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// Print writes the host logs in dir (a job's log directory) to w: host's
// log, or with host "" every host's, each line prefixed "HOST | " when there
// is more than one. With follow it then keeps printing what the hosts write,
// polling every poll, until ctx ends; it returns nil then.
func Print(ctx context.Context, w io.Writer, dir, host string, follow bool, poll time.Duration) error {
	if host != "" {
		if !hostRE.MatchString(host) {
			return fmt.Errorf("%q is not a training host name (algo-1, algo-2, …)", host)
		}
		if _, err := os.Stat(filepath.Join(dir, host+".log")); err != nil {
			return fmt.Errorf("no log for host %s: %w", host, err)
		}
	}
	t := tail{w: w, dir: dir, offset: map[string]int64{}, partial: map[string][]byte{}}
	for {
		hosts := []string{host}
		if host == "" {
			var err error
			if hosts, err = Hosts(dir); err != nil {
				return err
			}
		}
		for _, h := range hosts {
			if err := t.read(h, len(hosts) > 1, !follow); err != nil {
				return err
			}
		}
		if !follow {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(poll):
		}
	}
}

// tail remembers how far each host's log has been printed.
type tail struct {
	w       io.Writer
	dir     string
	offset  map[string]int64
	partial map[string][]byte // a line not ended yet
}

// read prints what host's log gained since the last read: whole lines, and
// with flush also a last unfinished one.
func (t *tail) read(host string, prefix, flush bool) error {
	f, err := os.OpenFile(filepath.Join(t.dir, host+".log"), os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Seek(t.offset[host], io.SeekStart); err != nil {
		return err
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return err
	}
	t.offset[host] += int64(len(b))
	b = append(t.partial[host], b...)
	var out bytes.Buffer
	for {
		line, rest, ok := bytes.Cut(b, []byte("\n"))
		if !ok {
			break
		}
		writeLine(&out, host, line, prefix)
		b = rest
	}
	if flush && len(b) > 0 {
		writeLine(&out, host, b, prefix)
		b = nil
	}
	t.partial[host] = bytes.Clone(b)
	_, err = t.w.Write(out.Bytes())
	return err
}

func writeLine(out *bytes.Buffer, host string, line []byte, prefix bool) {
	if prefix {
		out.WriteString(host + " | ")
	}
	out.Write(line)
	out.WriteByte('\n')
}
