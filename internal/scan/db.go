package scan

import (
	"archive/zip"
	"bufio"
	"bytes"
	"compress/gzip"
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
// largest all.zip holds a few hundred thousand of them; NVD knows about
// 300,000 CVEs. NVD files are bounded by maxNVDSize instead (nvd.go).
const (
	maxRecordSize  = 16 << 20
	maxZipEntries  = 2_000_000
	maxJSONEntries = 2_000_000
)

// sniffSize is how much of a file is read to tell NVD from OSV (isNVD).
const sniffSize = 64 << 10

// ErrNoDatabase is returned (wrapped) by Load when no database was imported.
var ErrNoDatabase = errors.New("no vulnerability database imported")

// DB is the imported vulnerability database.
//
// Layout under DATA/vulndb (directory 0700, files 0600):
//
//	db.json      the records, an index ecosystem/package → record ids,
//	             NVD's ratings of CVEs, the import time and counts;
//	             replaced atomically
//	import.lock  flock: one import at a time
type DB struct {
	Format int `json:"format"`
	// Version changes with every import (OSV or NVD); reports are cached
	// per image digest and Version.
	Version    string              `json:"version"`
	Imported   time.Time           `json:"imported"`
	Records    int                 `json:"records"`
	Ecosystems map[string]int      `json:"ecosystems"` // records affecting each ecosystem
	Index      map[string][]string `json:"index"`      // ecosystem/package → record ids
	Vulns      map[string]*Vuln    `json:"vulns"`      // id → record
	// NVD is CVE id → NVD's rating, from imported NVD files: the severity
	// of a finding whose record states none. NVDImported is when NVD files
	// were last imported. Both are absent from databases written before
	// convoy read NVD files, which load as they are (the format did not
	// change: the fields only add).
	NVD         map[string]*NVDRating `json:"nvd,omitempty"`
	NVDImported time.Time             `json:"nvd_imported,omitzero"`
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
	Imported    int            // records read (new or replacing a record of the same id)
	Withdrawn   int            // withdrawn records: ignored, and removed if present
	Ecosystems  map[string]int // records read per ecosystem
	NVDFiles    int            // NVD files read
	NVD         int            // CVEs NVD rates in them (new or replacing a rating)
	NVDRejected int            // CVEs NVD rejected: removed if present
	DB          *DB            // the database after the import
}

// importer collects what the inputs of one import hold.
type importer struct {
	fresh     map[string]*Vuln
	withdrawn map[string]bool
	nvd       map[string]*NVDRating // nil: rejected
	nvdFiles  int
}

// read reads one file: gzip-compressed or not, an NVD file (told by its
// content, isNVD) or an OSV record or array of records.
func (im *importer) read(name string, r io.Reader) error {
	br := bufio.NewReaderSize(r, sniffSize)
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return fmt.Errorf("%s: not a readable gzip file: %w", name, err)
		}
		defer zr.Close()
		br = bufio.NewReaderSize(&capReader{r: zr, left: maxNVDSize, name: name}, sniffSize)
	}
	head, _ := br.Peek(sniffSize)
	if isNVD(head) {
		im.nvdFiles++
		if _, err := parseNVD(br, im.nvd); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		return nil
	}
	data, err := io.ReadAll(io.LimitReader(br, maxRecordSize+1))
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if len(data) > maxRecordSize {
		return fmt.Errorf("%s is larger than %d MiB and not an NVD file: not an OSV record (import zip files as they are, without unpacking)", name, maxRecordSize>>20)
	}
	recs, err := parseOSVFile(data)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	for _, r := range recs {
		if r.withdrawn != "" {
			im.withdrawn[r.withdrawn] = true
			delete(im.fresh, r.withdrawn)
			continue
		}
		v := r.vuln
		delete(im.withdrawn, v.ID)
		im.fresh[v.ID] = &v
		if len(im.fresh) > maxJSONEntries {
			return fmt.Errorf("more than %d records: refusing an input this large", maxJSONEntries)
		}
	}
	return nil
}

// capReader fails, rather than cuts short, a stream longer than left
// bytes: a gzip file that decompresses past maxNVDSize is refused with an
// error that says so, not read as truncated JSON.
type capReader struct {
	r    io.Reader
	left int64
	name string
}

func (c *capReader) Read(p []byte) (int, error) {
	if c.left <= 0 {
		var b [1]byte
		if n, err := c.r.Read(b[:]); n == 0 {
			return 0, err
		}
		return 0, fmt.Errorf("%s decompresses to more than %d MiB, more than any NVD or OSV file: refusing it (a gzip bomb?)", c.name, maxNVDSize>>20)
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= int64(n)
	return n, err
}

// Import adds OSV records and NVD ratings to the database of dataDir.
// Files are OSV records (.json) or NVD files (NVD CVE API 2.0 responses,
// NVD's 2.0 and 1.1 JSON feeds), told apart by their content, each plain
// or gzip-compressed (.json.gz); directories of them (searched
// recursively); or zip files of them such as osv.dev's all.zip. A record
// replaces an earlier one of the same id, a rating an earlier one of the
// same CVE. Every input is read before anything is written, and the
// database is replaced in one rename: an input that is neither OSV nor NVD
// leaves the database as it was.
func Import(dataDir string, files ...string) (ImportResult, error) {
	if len(files) == 0 {
		return ImportResult{}, errors.New("no files to import: name OSV .json files, directories of them, or zip files (osv.dev's all.zip), and NVD JSON feeds (nvdcve-2.0-YYYY.json.gz)")
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
	im := &importer{fresh: map[string]*Vuln{}, withdrawn: map[string]bool{}, nvd: map[string]*NVDRating{}}
	for _, f := range files {
		if err := readInput(f, im.read); err != nil {
			return ImportResult{}, fmt.Errorf("import %s (nothing was imported): %w", f, err)
		}
	}
	fresh, withdrawn := im.fresh, im.withdrawn

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
	if db.NVD == nil {
		db.NVD = map[string]*NVDRating{}
	}
	for id, r := range im.nvd {
		if r == nil {
			delete(db.NVD, id)
			res.NVDRejected++
			continue
		}
		db.NVD[id] = r
		res.NVD++
	}
	res.NVDFiles = im.nvdFiles

	now := time.Now().UTC()
	if im.nvdFiles > 0 {
		db.NVDImported = now
	}
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

// readInput calls add with every JSON file in name: a file of any name, a
// directory (recursively, .json and .json.gz files only; symlinks are not
// followed) or a zip file.
func readInput(name string, add func(name string, r io.Reader) error) error {
	fi, err := os.Stat(name)
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return filepath.WalkDir(name, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.Type().IsRegular() || !isJSONName(p) {
				return nil
			}
			return readFile(p, add)
		})
	}
	if isZip(name) {
		return readZip(name, add)
	}
	return readFile(name, add)
}

func isJSONName(name string) bool {
	return strings.HasSuffix(name, ".json") || strings.HasSuffix(name, ".json.gz")
}

func readFile(name string, add func(name string, r io.Reader) error) error {
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	return add(name, f)
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

// readZip reads the .json and .json.gz entries of a zip file. Nothing is extracted to
// disk, but an entry whose name would leave a directory it were extracted
// to (zip slip: "../x", "/etc/x") marks a file crafted to attack, and the
// whole zip is refused.
func readZip(name string, add func(name string, r io.Reader) error) error {
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
		if zf.FileInfo().IsDir() || !isJSONName(n) {
			continue
		}
		if zf.UncompressedSize64 > maxNVDSize {
			return fmt.Errorf("zip entry %s is larger than %d MiB: neither an OSV record nor an NVD file", zf.Name, maxNVDSize>>20)
		}
		rc, err := zf.Open()
		if err != nil {
			return fmt.Errorf("zip entry %s: %w", zf.Name, err)
		}
		// archive/zip fails an entry that holds more than its declared
		// size, so the check above bounds what is read.
		err = add(zf.Name, rc)
		rc.Close()
		if err != nil {
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
