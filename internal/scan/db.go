package scan

import (
	"archive/zip"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"convoy/internal/fsutil"
)

// Limits on what Import reads: an OSV record is a few kilobytes, osv.dev's
// largest all.zip holds a few hundred thousand of them.
const (
	maxRecordSize  = 16 << 20
	maxZipEntries  = 2_000_000
	maxJSONEntries = 2_000_000
)

// ErrNoDatabase is returned (wrapped) by Load when no database was imported.
var ErrNoDatabase = errors.New("no vulnerability database imported")

// DB is the imported vulnerability database.
//
// Layout under DATA/vulndb (directory 0700, files 0600):
//
//	db.json      the records, an index ecosystem/package → record ids,
//	             the import time and counts; replaced atomically
//	import.lock  flock: one import at a time
type DB struct {
	Format int `json:"format"`
	// Version changes with every import; reports are cached per image
	// digest and Version.
	Version    string              `json:"version"`
	Imported   time.Time           `json:"imported"`
	Records    int                 `json:"records"`
	Ecosystems map[string]int      `json:"ecosystems"` // records affecting each ecosystem
	Index      map[string][]string `json:"index"`      // ecosystem/package → record ids
	Vulns      map[string]*Vuln    `json:"vulns"`      // id → record
}

const dbFormat = 1

// Dir is the database directory in a convoy data directory.
func Dir(dataDir string) string { return filepath.Join(dataDir, "vulndb") }

func dbPath(dataDir string) string { return filepath.Join(Dir(dataDir), "db.json") }

func indexKey(eco, name string) string {
	if ecosystemBase(eco) == "PyPI" {
		name = pypiName(name)
	}
	return eco + "/" + name
}

// Load reads the database of dataDir; ErrNoDatabase (wrapped, with how to
// import one) when there is none.
func Load(dataDir string) (*DB, error) {
	b, err := os.ReadFile(dbPath(dataDir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w in %s: download OSV files (osv.dev publishes one all.zip per ecosystem, e.g. https://osv-vulnerabilities.storage.googleapis.com/Debian/all.zip) and import them with `convoy vulndb import --data %s FILE…`", ErrNoDatabase, Dir(dataDir), dataDir)
	}
	if err != nil {
		return nil, fmt.Errorf("read vulnerability database: %w", err)
	}
	var db DB
	if err := json.Unmarshal(b, &db); err != nil || db.Format != dbFormat {
		return nil, fmt.Errorf("vulnerability database %s is damaged or of another convoy version (%v); import the OSV files again", dbPath(dataDir), err)
	}
	return &db, nil
}

// lookup returns the records that affect the package name of ecosystem eco.
func (db *DB) lookup(eco, name string) []*Vuln {
	var out []*Vuln
	for _, id := range db.Index[indexKey(eco, name)] {
		if v := db.Vulns[id]; v != nil {
			out = append(out, v)
		}
	}
	return out
}

// ImportResult says what an import changed.
type ImportResult struct {
	Imported   int            // records read (new or replacing a record of the same id)
	Withdrawn  int            // withdrawn records: ignored, and removed if present
	Ecosystems map[string]int // records read per ecosystem
	DB         *DB            // the database after the import
}

// Import adds OSV records to the database of dataDir: files are single
// records (.json), directories of them (searched recursively), or zip files
// of them such as osv.dev's all.zip. A record replaces an earlier one of
// the same id. Every input is read before anything is written, and the
// database is replaced in one rename: an input that is not OSV leaves the
// database as it was.
func Import(dataDir string, files ...string) (ImportResult, error) {
	if len(files) == 0 {
		return ImportResult{}, errors.New("no files to import: name OSV .json files, directories of them, or zip files (osv.dev's all.zip)")
	}
	dir := Dir(dataDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return ImportResult{}, fmt.Errorf("create vulnerability database directory: %w", err)
	}
	unlock, err := lockFile(filepath.Join(dir, "import.lock"))
	if err != nil {
		return ImportResult{}, err
	}
	defer unlock()

	res := ImportResult{Ecosystems: map[string]int{}}
	fresh := map[string]*Vuln{}
	withdrawn := map[string]bool{}
	add := func(name string, data []byte) error {
		recs, err := parseOSVFile(data)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		for _, r := range recs {
			if r.withdrawn != "" {
				withdrawn[r.withdrawn] = true
				delete(fresh, r.withdrawn)
				continue
			}
			v := r.vuln
			delete(withdrawn, v.ID)
			fresh[v.ID] = &v
			if len(fresh) > maxJSONEntries {
				return fmt.Errorf("more than %d records: refusing an input this large", maxJSONEntries)
			}
		}
		return nil
	}
	for _, f := range files {
		if err := readInput(f, add); err != nil {
			return ImportResult{}, fmt.Errorf("import %s (nothing was imported): %w", f, err)
		}
	}

	db, err := Load(dataDir)
	if errors.Is(err, ErrNoDatabase) {
		db, err = &DB{Vulns: map[string]*Vuln{}}, nil
	}
	if err != nil {
		return ImportResult{}, err
	}
	for id := range withdrawn {
		delete(db.Vulns, id)
	}
	for id, v := range fresh {
		db.Vulns[id] = v
		for _, eco := range ecosystemsOf(v) {
			res.Ecosystems[eco]++
		}
	}
	res.Imported, res.Withdrawn = len(fresh), len(withdrawn)

	now := time.Now().UTC()
	db.Format, db.Imported, db.Records = dbFormat, now, len(db.Vulns)
	db.Version = now.Format(time.RFC3339Nano)
	db.Ecosystems, db.Index = map[string]int{}, map[string][]string{}
	ids := make([]string, 0, len(db.Vulns))
	for id := range db.Vulns {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		v := db.Vulns[id]
		for _, eco := range ecosystemsOf(v) {
			db.Ecosystems[eco]++
		}
		seen := map[string]bool{}
		for _, a := range v.Affected {
			k := indexKey(a.Ecosystem, a.Name)
			if !seen[k] {
				seen[k] = true
				db.Index[k] = append(db.Index[k], id)
			}
		}
	}
	out, err := json.Marshal(db)
	if err != nil {
		return ImportResult{}, err
	}
	if err := fsutil.WriteFileAtomic(dbPath(dataDir), out, 0o600); err != nil {
		return ImportResult{}, fmt.Errorf("write vulnerability database: %w", err)
	}
	res.DB = db
	return res, nil
}

func ecosystemsOf(v *Vuln) []string {
	var out []string
	for _, a := range v.Affected {
		if !slices.Contains(out, a.Ecosystem) {
			out = append(out, a.Ecosystem)
		}
	}
	return out
}

type parsed struct {
	vuln      Vuln
	withdrawn string // id of a withdrawn record
}

// parseOSVFile reads a file holding one OSV record, or a JSON array of them.
func parseOSVFile(data []byte) ([]parsed, error) {
	raws := []json.RawMessage{data}
	if t := bytes.TrimLeft(data, " \t\r\n"); len(t) > 0 && t[0] == '[' {
		raws = nil
		if err := json.Unmarshal(data, &raws); err != nil {
			return nil, fmt.Errorf("not an OSV JSON record: %w", err)
		}
	}
	var out []parsed
	for _, raw := range raws {
		v, err := parseOSV(raw)
		if errors.Is(err, errWithdrawn) {
			var id struct {
				ID string `json:"id"`
			}
			json.Unmarshal(raw, &id)
			out = append(out, parsed{withdrawn: id.ID})
			continue
		}
		if err != nil {
			return nil, err
		}
		for i := range v.Affected {
			if ecosystemBase(v.Affected[i].Ecosystem) == "PyPI" {
				v.Affected[i].Name = pypiName(v.Affected[i].Name)
			}
		}
		out = append(out, parsed{vuln: v})
	}
	return out, nil
}

// readInput calls add with every OSV file in name: a .json file, a
// directory (recursively, .json files only; symlinks are not followed) or a
// zip file.
func readInput(name string, add func(name string, data []byte) error) error {
	fi, err := os.Stat(name)
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return filepath.WalkDir(name, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.Type().IsRegular() || !strings.HasSuffix(p, ".json") {
				return nil
			}
			b, err := readLimited(p)
			if err != nil {
				return err
			}
			return add(p, b)
		})
	}
	if isZip(name) {
		return readZip(name, add)
	}
	b, err := readLimited(name)
	if err != nil {
		return err
	}
	return add(name, b)
}

func readLimited(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxRecordSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxRecordSize {
		return nil, fmt.Errorf("%s is larger than %d MiB: not an OSV record (import zip files as they are, without unpacking)", name, maxRecordSize>>20)
	}
	return b, nil
}

func isZip(name string) bool {
	f, err := os.Open(name)
	if err != nil {
		return false
	}
	defer f.Close()
	var magic [4]byte
	_, err = io.ReadFull(f, magic[:])
	return err == nil && string(magic[:]) == "PK\x03\x04"
}

// readZip reads the .json entries of a zip file. Nothing is extracted to
// disk, but an entry whose name would leave a directory it were extracted
// to (zip slip: "../x", "/etc/x") marks a file crafted to attack, and the
// whole zip is refused.
func readZip(name string, add func(name string, data []byte) error) error {
	zr, err := zip.OpenReader(name)
	if err != nil {
		return fmt.Errorf("not a readable zip file: %w", err)
	}
	defer zr.Close()
	if len(zr.File) > maxZipEntries {
		return fmt.Errorf("zip has %d entries, more than the %d convoy reads", len(zr.File), maxZipEntries)
	}
	for _, zf := range zr.File {
		n := strings.ReplaceAll(zf.Name, `\`, "/")
		if path.IsAbs(n) || slices.Contains(strings.Split(n, "/"), "..") {
			return fmt.Errorf("zip entry %q leaves the archive's directory (zip slip): refusing the whole file", zf.Name)
		}
		if zf.FileInfo().IsDir() || !strings.HasSuffix(n, ".json") {
			continue
		}
		if zf.UncompressedSize64 > maxRecordSize {
			return fmt.Errorf("zip entry %s is larger than %d MiB: not an OSV record", zf.Name, maxRecordSize>>20)
		}
		rc, err := zf.Open()
		if err != nil {
			return fmt.Errorf("zip entry %s: %w", zf.Name, err)
		}
		b, err := io.ReadAll(io.LimitReader(rc, maxRecordSize+1))
		rc.Close()
		if err != nil {
			return fmt.Errorf("zip entry %s: %w", zf.Name, err)
		}
		if len(b) > maxRecordSize {
			return fmt.Errorf("zip entry %s is larger than %d MiB: not an OSV record", zf.Name, maxRecordSize>>20)
		}
		if err := add(zf.Name, b); err != nil {
			return err
		}
	}
	return nil
}

// lockFile takes an exclusive flock(2) on path, waiting for it.
func lockFile(path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}
