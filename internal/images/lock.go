package images

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"
)

// flock takes an flock(2) lock on path (created if missing): syscall.LOCK_SH or
// LOCK_EX. unlock may be called more than once. It polls so that ctx can cancel the wait. The lock is held by the
// open file, so two Stores in one process exclude each other as two processes
// do.
func flock(ctx context.Context, path string, how int) (unlock func(), err error) {
	for delay := time.Millisecond; ; delay = min(2*delay, 100*time.Millisecond) {
		unlock, ok, err := tryFlock(path, how)
		if err != nil || ok {
			return unlock, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for lock %s: %w", path, ctx.Err())
		case <-time.After(delay):
		}
	}
}

// tryFlock is flock without waiting: ok is false when another holder has it.
func tryFlock(path string, how int) (unlock func(), ok bool, err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, false, err
	}
	for {
		err = syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if errors.Is(err, syscall.EWOULDBLOCK) {
		f.Close()
		return nil, false, nil
	}
	if err != nil {
		f.Close()
		return nil, false, fmt.Errorf("lock %s: %w", path, err)
	}
	var once sync.Once
	return func() { once.Do(func() { f.Close() }) }, true, nil
}
