// Package state opens convoy's database and applies each component's schema
// migrations. The embedded default is SQLite (modernc.org/sqlite, pure Go) in
// WAL mode with synchronous=FULL, so a committed transaction survives a crash
// or power loss. Each package owns its tables and registers its own ordered
// migrations under its name; this package only applies them, each in a
// transaction together with its version record.
package state

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

// DB is the database handle shared by convoy's components. Write through
// Tx or ExecContext, which take turns; a transaction begun with BeginTx
// bypasses the queue and falls back on SQLite's busy polling.
type DB struct {
	*sql.DB
	// write admits one writing transaction of this process at a time, in
	// the order they ask. SQLite allows one writer; without this, writers
	// that find the database locked poll it with sleeps of up to 100 ms
	// (SQLite's busy handler), and under a burst of writes some wait a
	// second or more while others go first.
	write sync.Mutex

	// stmts caches prepared statements by their SQL text (see stmt).
	stmts  sync.Map // string → *sql.Stmt
	nstmts atomic.Int32
}

// maxStmts bounds the statement cache: convoy's SQL texts are constants,
// but a caller that built its text from input must not grow it forever.
const maxStmts = 512

// stmt returns the cached prepared statement of query, preparing it on
// first use, or nil when it is not to be cached (the cache is full, the
// text holds several statements, or preparing failed — the caller's own
// call then reports the error). modernc.org/sqlite compiles the SQL text
// of every unprepared query anew: about 20 µs each, a tenth of a small
// PutObject's CPU; database/sql keeps a prepared statement per connection.
func (d *DB) stmt(ctx context.Context, query string) *sql.Stmt {
	if s, ok := d.stmts.Load(query); ok {
		return s.(*sql.Stmt)
	}
	if d.nstmts.Load() >= maxStmts || strings.Contains(strings.TrimRight(query, "; \t\n"), ";") {
		return nil
	}
	s, err := d.DB.PrepareContext(ctx, query)
	if err != nil {
		return nil
	}
	if prev, loaded := d.stmts.LoadOrStore(query, s); loaded {
		s.Close()
		return prev.(*sql.Stmt)
	}
	d.nstmts.Add(1)
	return s
}

// QueryRowContext is sql.DB's, with the statement cache.
func (d *DB) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	if s := d.stmt(ctx, query); s != nil {
		return s.QueryRowContext(ctx, args...)
	}
	return d.DB.QueryRowContext(ctx, query, args...)
}

// QueryContext is sql.DB's, with the statement cache.
func (d *DB) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if s := d.stmt(ctx, query); s != nil {
		return s.QueryContext(ctx, args...)
	}
	return d.DB.QueryContext(ctx, query, args...)
}

// OpenSQLite opens (creating if needed) the SQLite database at path.
func OpenSQLite(ctx context.Context, path string) (*DB, error) {
	return openSQLite(ctx, path, 10*time.Second)
}

// openSQLite is OpenSQLite with SQLite's busy timeout: how long a
// connection waits for another process (or a reader checkpointing) that
// holds the write lock.
func openSQLite(ctx context.Context, path string, busy time.Duration) (*DB, error) {
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)" +
		fmt.Sprintf("&_pragma=busy_timeout(%d)", busy.Milliseconds()) + "&_pragma=foreign_keys(ON)&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	// One writer at a time is SQLite's model; readers share WAL snapshots.
	db.SetMaxOpenConns(8)
	db.SetConnMaxIdleTime(5 * time.Minute)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	var mode string
	if err := db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil || mode != "wal" {
		db.Close()
		return nil, fmt.Errorf("database %s: journal_mode is %q, want wal (%v)", path, mode, err)
	}
	d := &DB{DB: db}
	if _, err := d.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		component TEXT NOT NULL,
		version   INTEGER NOT NULL,
		applied   TEXT NOT NULL,
		PRIMARY KEY (component, version))`); err != nil {
		db.Close()
		return nil, fmt.Errorf("create schema_migrations: %w", err)
	}
	return d, nil
}

// Migrate applies the migrations of component that have not been applied
// yet. migrations[i] is version i+1; never edit or reorder a released one,
// append a new one instead.
func (d *DB) Migrate(ctx context.Context, component string, migrations []string) error {
	var have int
	if err := d.QueryRowContext(ctx,
		`SELECT COALESCE(MAX(version), 0) FROM schema_migrations WHERE component = ?`, component).Scan(&have); err != nil {
		return fmt.Errorf("read %s schema version: %w", component, err)
	}
	if have > len(migrations) {
		return fmt.Errorf("%s schema is at version %d but this convoy knows only %d: it was written by a newer convoy", component, have, len(migrations))
	}
	for v := have + 1; v <= len(migrations); v++ {
		err := d.Tx(ctx, func(tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, migrations[v-1]); err != nil {
				return err
			}
			_, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (component, version, applied) VALUES (?, ?, ?)`,
				component, v, time.Now().UTC().Format(time.RFC3339))
			return err
		})
		if err != nil {
			return fmt.Errorf("migrate %s to version %d: %w", component, v, err)
		}
	}
	return nil
}

// ExecContext runs a statement that writes (in its own transaction), in
// turn with the other writers of this process.
func (d *DB) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	d.write.Lock()
	defer d.write.Unlock()
	if s := d.stmt(ctx, query); s != nil {
		return s.ExecContext(ctx, args...)
	}
	return d.DB.ExecContext(ctx, query, args...)
}

// Tx runs fn in a transaction, committing if it returns nil.
func (d *DB) Tx(ctx context.Context, fn func(*sql.Tx) error) error {
	d.write.Lock()
	defer d.write.Unlock()
	tx, err := d.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}
