package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"syscall"
)

// pipeCheck is the mode "pipe_check": for every channel, in name order, it
// notes the channel's input mode and record wrapper. A Pipe channel's
// epochs 0 and 1 are read to EOF from /opt/ml/input/data/<channel>_0 and
// _1 (the next epoch's FIFO must exist as soon as one ends) and noted as
// "pipe <channel>_<epoch> <bytes> <sha256>"; then whether the container
// may open epoch 2's FIFO for writing. A File or FastFile channel's files
// are digested as in mode "train".
func pipeCheck(dc map[string]map[string]string) {
	var names []string
	for c := range dc {
		names = append(names, c)
	}
	sort.Strings(names)
	for _, c := range names {
		mode := dc[c]["TrainingInputMode"]
		fmt.Fprintf(&model, "channel %s mode=%s wrapper=%s\n", c, mode, dc[c]["RecordWrapperType"])
		if mode != "Pipe" {
			fmt.Fprintf(&model, "files %s %s\n", c, digest("/opt/ml/input/data/"+c))
			continue
		}
		for epoch := range 2 {
			path := fmt.Sprintf("/opt/ml/input/data/%s_%d", c, epoch)
			f, err := os.Open(path)
			if err != nil {
				fail(err.Error())
			}
			h := sha256.New()
			n, err := io.Copy(h, f)
			f.Close()
			if err != nil {
				fail(err.Error())
			}
			fmt.Fprintf(&model, "pipe %s_%d %d %s\n", c, epoch, n, hex.EncodeToString(h.Sum(nil)))
		}
		// No reader: a writable FIFO says ENXIO, one the user may not
		// write EACCES.
		f, err := os.OpenFile(fmt.Sprintf("/opt/ml/input/data/%s_2", c), os.O_WRONLY|syscall.O_NONBLOCK, 0)
		switch {
		case err == nil:
			f.Close()
			fmt.Fprintf(&model, "write %s_2: ok\n", c)
		case errors.Is(err, syscall.EACCES):
			fmt.Fprintf(&model, "write %s_2: denied\n", c)
		default:
			fmt.Fprintf(&model, "write %s_2: %v\n", c, err)
		}
	}
}
