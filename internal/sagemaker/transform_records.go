package sagemaker

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
)

// A transform job reads each input object as a stream of records (split
// per SplitType) and packs them into request payloads (per BatchStrategy)
// of at most MaxPayloadInMB: no more than one payload of an object is in
// memory at a time, whatever the object's size.

// errRecordTooLarge is a record that cannot fit in one payload.
type errRecordTooLarge struct {
	record int // 1-based
	limit  int
	split  string
}

func (e *errRecordTooLarge) Error() string {
	if e.split == splitNone {
		return fmt.Sprintf("the object is larger than MaxPayloadInMB (%d MB) and SplitType is None: split it into records (SplitType Line or RecordIO) or raise MaxPayloadInMB", e.limit>>20)
	}
	return fmt.Sprintf("record %d is larger than MaxPayloadInMB (%d MB)", e.record, e.limit>>20)
}

// recordReader yields an object's records, io.EOF after the last.
type recordReader interface {
	next() ([]byte, error)
}

func newRecordReader(r io.Reader, split string, limit int) recordReader {
	switch split {
	case splitLine:
		return &lineReader{br: bufio.NewReaderSize(r, 64<<10), limit: limit}
	case splitRecordIO:
		return &recordIOReader{r: r, limit: limit}
	}
	return &wholeReader{r: r, limit: limit}
}

// wholeReader is SplitType None: the object is one record.
type wholeReader struct {
	r     io.Reader
	limit int
	done  bool
}

func (w *wholeReader) next() ([]byte, error) {
	if w.done {
		return nil, io.EOF
	}
	w.done = true
	b, err := io.ReadAll(io.LimitReader(w.r, int64(w.limit)+1))
	if err != nil {
		return nil, err
	}
	if len(b) > w.limit {
		return nil, &errRecordTooLarge{record: 1, limit: w.limit, split: splitNone}
	}
	if len(b) == 0 {
		return nil, io.EOF // an empty object has no record
	}
	return b, nil
}

// lineReader is SplitType Line: each record is a line without its "\n";
// a last line without one is a record too.
type lineReader struct {
	br    *bufio.Reader
	limit int
	n     int
}

func (l *lineReader) next() ([]byte, error) {
	var rec []byte
	for {
		chunk, err := l.br.ReadSlice('\n')
		if len(rec)+len(chunk) > l.limit+1 || (err != nil && len(rec)+len(chunk) > l.limit) {
			return nil, &errRecordTooLarge{record: l.n + 1, limit: l.limit, split: splitLine}
		}
		rec = append(rec, chunk...)
		switch {
		case err == bufio.ErrBufferFull:
			continue
		case err == io.EOF:
			if len(rec) == 0 {
				return nil, io.EOF
			}
			l.n++
			return rec, nil
		case err != nil:
			return nil, err
		}
		l.n++
		return rec[:len(rec)-1], nil
	}
}

// recordIOReader is SplitType RecordIO (MXNet's framing, see
// recordIOMagic). Records keep their framing: the container gets RecordIO.
type recordIOReader struct {
	r     io.Reader
	limit int
	n     int
}

func (r *recordIOReader) next() ([]byte, error) {
	var rec []byte
	for {
		var head [8]byte
		if _, err := io.ReadFull(r.r, head[:]); err != nil {
			if err == io.EOF && len(rec) == 0 {
				return nil, io.EOF
			}
			return nil, fmt.Errorf("RecordIO record %d is truncated: %w", r.n+1, noEOF(err))
		}
		if binary.LittleEndian.Uint32(head[:4]) != recordIOMagic {
			return nil, fmt.Errorf("RecordIO record %d does not start with the RecordIO magic number", r.n+1)
		}
		word := binary.LittleEndian.Uint32(head[4:])
		flag, size := word>>29, int(word&(1<<29-1))
		padded := (size + 3) &^ 3
		if len(rec)+8+padded > r.limit {
			return nil, &errRecordTooLarge{record: r.n + 1, limit: r.limit, split: splitRecordIO}
		}
		start := len(rec)
		rec = append(rec, head[:]...)
		rec = append(rec, make([]byte, padded)...)
		if _, err := io.ReadFull(r.r, rec[start+8:]); err != nil {
			return nil, fmt.Errorf("RecordIO record %d is truncated: %w", r.n+1, noEOF(err))
		}
		// 0: a whole record; 1, 2, 3: its first, middle and last parts.
		if flag == 0 || flag == 3 {
			r.n++
			return rec, nil
		}
	}
}

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// batcher packs records into payloads: one record each (SingleRecord), or
// as many as fit in limit bytes (MultiRecord), Line records joined by
// "\n" and RecordIO records back to back.
type batcher struct {
	rr      recordReader
	multi   bool
	sep     []byte
	limit   int
	pending []byte
	eof     bool
}

func newBatcher(rr recordReader, split, strategy string, limit int) *batcher {
	b := &batcher{rr: rr, multi: strategy == multiRecord && split != splitNone, limit: limit}
	if split == splitLine {
		b.sep = []byte("\n")
	}
	return b
}

// next returns the next payload, io.EOF after the last.
func (b *batcher) next() ([]byte, error) {
	payload := b.pending
	b.pending = nil
	if payload == nil {
		if b.eof {
			return nil, io.EOF
		}
		rec, err := b.rr.next()
		if err == io.EOF {
			b.eof = true
			return nil, io.EOF
		}
		if err != nil {
			return nil, err
		}
		payload = rec
	}
	if !b.multi {
		return payload, nil
	}
	for !b.eof {
		rec, err := b.rr.next()
		if err == io.EOF {
			b.eof = true
			break
		}
		if err != nil {
			return nil, err
		}
		if len(payload)+len(b.sep)+len(rec) > b.limit {
			b.pending = rec
			break
		}
		payload = append(append(payload, b.sep...), rec...)
	}
	return payload, nil
}
