package state

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// TestWritersTakeTurns: many goroutines write at once, through Tx and
// ExecContext, with SQLite's busy timeout at zero, so that a writer that
// found the database locked would fail at once with SQLITE_BUSY instead of
// polling. None fails and every row is there: the writers queued in the
// process instead of colliding in SQLite.
func TestWritersTakeTurns(t *testing.T) {
	ctx := context.Background()
	db, err := openSQLite(ctx, filepath.Join(t.TempDir(), "convoy.db"), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Migrate(ctx, "test", []string{`CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)`}); err != nil {
		t.Fatal(err)
	}
	const writers, each = 16, 25
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				k := fmt.Sprintf("%d/%d", w, i)
				if i%2 == 0 {
					errs <- db.Tx(ctx, func(tx *sql.Tx) error {
						if _, err := tx.ExecContext(ctx, `INSERT INTO t (k, v) VALUES (?, 0)`, k); err != nil {
							return err
						}
						time.Sleep(100 * time.Microsecond) // hold the lock a little, as real work does
						_, err := tx.ExecContext(ctx, `UPDATE t SET v = 1 WHERE k = ?`, k)
						return err
					})
				} else {
					_, err := db.ExecContext(ctx, `INSERT INTO t (k, v) VALUES (?, 1)`, k)
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("a writer failed: %v", err)
		}
	}
	var n int
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM t WHERE v = 1`).Scan(&n); err != nil || n != writers*each {
		t.Fatalf("%d complete rows (%v), want %d", n, err, writers*each)
	}
}

// TestStatementCache: a query text is prepared once and reused, with the
// right results; a text of several statements, and texts beyond the
// cache's bound, go uncached and still work.
func TestStatementCache(t *testing.T) {
	ctx := context.Background()
	db, err := OpenSQLite(ctx, filepath.Join(t.TempDir(), "convoy.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, `CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)`); err != nil {
		t.Fatal(err)
	}
	before := db.nstmts.Load()
	for i := range 50 {
		if _, err := db.ExecContext(ctx, `INSERT INTO t (k, v) VALUES (?, ?)`, i, fmt.Sprint("v", i)); err != nil {
			t.Fatal(err)
		}
		var v string
		if err := db.QueryRowContext(ctx, `SELECT v FROM t WHERE k = ?`, i).Scan(&v); err != nil || v != fmt.Sprint("v", i) {
			t.Fatalf("row %d: %q %v", i, v, err)
		}
	}
	if n := db.nstmts.Load() - before; n != 2 {
		t.Errorf("%d statements prepared for two query texts", n)
	}
	if _, err := db.ExecContext(ctx, `UPDATE t SET v = 'a' WHERE k = 1; UPDATE t SET v = 'b' WHERE k = 2`); err != nil {
		t.Fatal(err)
	}
	var a, b string
	db.QueryRowContext(ctx, `SELECT v FROM t WHERE k = ?`, 1).Scan(&a)
	db.QueryRowContext(ctx, `SELECT v FROM t WHERE k = ?`, 2).Scan(&b)
	if a != "a" || b != "b" {
		t.Errorf("a text of two statements ran as %q, %q", a, b)
	}
	for i := range maxStmts + 10 {
		var n int
		if err := db.QueryRowContext(ctx, fmt.Sprintf(`SELECT COUNT(*) + %d FROM t`, i)).Scan(&n); err != nil || n != 50+i {
			t.Fatalf("query %d: %d %v", i, n, err)
		}
	}
	if n := db.nstmts.Load(); n > maxStmts {
		t.Errorf("%d statements cached, bound %d", n, maxStmts)
	}
}
