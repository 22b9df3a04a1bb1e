package scan

import (
	"bufio"
	"bytes"
	"debug/buildinfo"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"regexp"
	"slices"
	"strings"
)

// maxBinarySize caps the executables whose build information is read;
// larger files are skipped (no Go binary is that large).
const maxBinarySize = 200 << 20

// maxTextSize caps the package databases and metadata files read.
const maxTextSize = 64 << 20

// Package is one installed package of an image.
type Package struct {
	Ecosystem string `json:"ecosystem"` // OSV ecosystem: Debian:12, Go, PyPI …; "" when unknown
	Name      string `json:"name"`      // as OSV names it: the Debian source package, the Go module path
	Version   string `json:"version"`   // installed version
	Location  string `json:"location"`  // where it was found: /var/lib/dpkg/status, /usr/bin/app …
}

// Inventory is what a root filesystem holds.
type Inventory struct {
	OS       string    `json:"os,omitempty"` // "debian 12", "alpine 3.20.3"; "" when the image has no os-release
	Packages []Package `json:"packages"`
}

// osEcosystem is the OSV ecosystem of the OS's packages, "" when convoy
// does not know it.
func osEcosystem(id, versionID, version string) string {
	switch id {
	case "ubuntu":
		// Canonical's OSV records: Ubuntu:22.04:LTS, Ubuntu:25.10.
		if versionID == "" {
			return ""
		}
		if strings.Contains(version, "LTS") {
			return "Ubuntu:" + versionID + ":LTS"
		}
		return "Ubuntu:" + versionID
	case "debian":
		if major, _, _ := strings.Cut(versionID, "."); major != "" {
			return "Debian:" + major
		}
	case "alpine":
		parts := strings.SplitN(versionID, ".", 3)
		if len(parts) >= 2 {
			return "Alpine:v" + parts[0] + "." + parts[1]
		}
	}
	return ""
}

// TakeInventory lists the packages in the root filesystem at dir. Every
// file is opened through os.Root: a symlink that points outside dir (to
// the host's /etc, say) is not followed, whether absolute or relative.
func TakeInventory(dir string) (Inventory, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return Inventory{}, fmt.Errorf("open image root filesystem: %w", err)
	}
	defer root.Close()
	var inv Inventory
	id, versionID, version := readOSRelease(root)
	if id != "" {
		inv.OS = strings.TrimSpace(id + " " + versionID)
	}
	osEco := osEcosystem(id, versionID, version)

	inv.Packages = append(inv.Packages, readDpkg(root, osEco)...)
	inv.Packages = append(inv.Packages, readApk(root, osEco)...)
	walked, err := walk(root)
	if err != nil {
		return Inventory{}, err
	}
	inv.Packages = append(inv.Packages, walked...)
	slices.SortFunc(inv.Packages, func(a, b Package) int {
		return strings.Compare(a.Ecosystem+"\x00"+a.Name+"\x00"+a.Version+"\x00"+a.Location,
			b.Ecosystem+"\x00"+b.Name+"\x00"+b.Version+"\x00"+b.Location)
	})
	return inv, nil
}

// readSmall reads a text file of the image, or nil if it is missing,
// not a regular file, outside the root, or too large.
func readSmall(root *os.Root, name string) []byte {
	f, err := root.Open(name)
	if err != nil {
		return nil
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() || fi.Size() > maxTextSize {
		return nil
	}
	b, err := io.ReadAll(io.LimitReader(f, maxTextSize))
	if err != nil {
		return nil
	}
	return b
}

func readOSRelease(root *os.Root) (id, versionID, version string) {
	b := readSmall(root, "etc/os-release")
	if b == nil {
		b = readSmall(root, "usr/lib/os-release")
	}
	for line := range strings.Lines(string(b)) {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok {
			continue
		}
		v = strings.Trim(v, `"'`)
		switch k {
		case "ID":
			id = strings.ToLower(v)
		case "VERSION_ID":
			versionID = v
		case "VERSION":
			version = v
		}
	}
	return id, versionID, version
}

// stanzas splits an RFC 822-like database (dpkg status, apk installed) into
// paragraphs of field → value; continuation lines are dropped.
func stanzas(b []byte, sep string) []map[string]string {
	var out []map[string]string
	cur := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			if len(cur) > 0 {
				out = append(out, cur)
				cur = map[string]string{}
			}
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			continue
		}
		if k, v, ok := strings.Cut(line, sep); ok {
			cur[k] = strings.TrimSpace(v)
		}
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}

// readDpkg reads the installed packages of dpkg's status database and of
// distroless images' status.d. OSV's Debian records name source packages,
// so a package is listed under its Source (without a version in
// parentheses), else its Package, with the binary package's version.
func readDpkg(root *os.Root, eco string) []Package {
	files := []string{"var/lib/dpkg/status"}
	if entries, err := fs.ReadDir(root.FS(), "var/lib/dpkg/status.d"); err == nil {
		for _, e := range entries {
			if e.Type().IsRegular() && !strings.HasSuffix(e.Name(), ".md5sums") {
				files = append(files, "var/lib/dpkg/status.d/"+e.Name())
			}
		}
	}
	var out []Package
	seen := map[string]bool{}
	for _, name := range files {
		for _, st := range stanzas(readSmall(root, name), ":") {
			if status, ok := st["Status"]; ok && !strings.HasSuffix(status, " installed") {
				continue
			}
			pkg, ver := st["Package"], st["Version"]
			if pkg == "" || ver == "" {
				continue
			}
			if src, _, _ := strings.Cut(st["Source"], " "); src != "" {
				pkg = src
			}
			if key := pkg + "\x00" + ver; !seen[key] {
				seen[key] = true
				out = append(out, Package{Ecosystem: eco, Name: pkg, Version: ver, Location: "/" + name})
			}
		}
	}
	if eco != "" && !strings.HasPrefix(eco, "Debian:") && !strings.HasPrefix(eco, "Ubuntu:") {
		for i := range out {
			out[i].Ecosystem = "" // dpkg on another OS: not matched
		}
	}
	return out
}

// readApk reads Alpine's installed database, listing packages under their
// origin (the aports source package OSV's Alpine records name).
func readApk(root *os.Root, eco string) []Package {
	var out []Package
	for _, st := range stanzas(readSmall(root, "lib/apk/db/installed"), ":") {
		name, ver := st["P"], st["V"]
		if o := st["o"]; o != "" {
			name = o
		}
		if name == "" || ver == "" {
			continue
		}
		e := eco
		if !strings.HasPrefix(e, "Alpine:") {
			e = ""
		}
		out = append(out, Package{Ecosystem: e, Name: name, Version: ver, Location: "/lib/apk/db/installed"})
	}
	return out
}

var skipDirs = map[string]bool{"proc": true, "sys": true, "dev": true}

// walk finds Go binaries and Python distributions. fs.WalkDir on the root's
// FS reports symlinks as such and does not descend into them.
func walk(root *os.Root) ([]Package, error) {
	var out []Package
	err := fs.WalkDir(root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == "." {
				return err
			}
			return nil // unreadable: skip, as a scanner of a running system would
		}
		if d.IsDir() {
			if skipDirs[p] {
				return fs.SkipDir
			}
			if strings.HasSuffix(p, ".dist-info") && (strings.Contains(p, "/site-packages/") || strings.Contains(p, "/dist-packages/")) {
				if pkg, ok := readDistInfo(root, p); ok {
					out = append(out, pkg)
				}
				return fs.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() {
			return nil
		}
		info, err := d.Info()
		if err != nil || info.Mode().Perm()&0o111 == 0 || info.Size() < 4 || info.Size() > maxBinarySize {
			return nil
		}
		out = append(out, goBinary(root, p)...)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("walk image root filesystem: %w", err)
	}
	return out, nil
}

var elfMagic = []byte("\x7fELF")

// goBinary lists a Go executable's modules: the main module, each
// dependency (its replacement when replaced), and the standard library as
// "stdlib" at the toolchain's version. Not a Go binary: nothing.
func goBinary(root *os.Root, name string) []Package {
	f, err := root.Open(name)
	if err != nil {
		return nil
	}
	defer f.Close()
	var magic [4]byte
	if _, err := io.ReadFull(f, magic[:]); err != nil || !bytes.Equal(magic[:], elfMagic) {
		return nil
	}
	bi, err := buildinfo.Read(f)
	if err != nil {
		return nil
	}
	loc := "/" + name
	var out []Package
	if v := goStdlibVersion(bi.GoVersion); v != "" {
		out = append(out, Package{Ecosystem: "Go", Name: "stdlib", Version: v, Location: loc})
	}
	if bi.Main.Path != "" {
		out = append(out, Package{Ecosystem: "Go", Name: bi.Main.Path, Version: bi.Main.Version, Location: loc})
	}
	for _, m := range bi.Deps {
		if m.Replace != nil {
			m = m.Replace
		}
		if m.Path == "" || m.Version == "" {
			continue // replaced by a directory: no version to match
		}
		out = append(out, Package{Ecosystem: "Go", Name: m.Path, Version: m.Version, Location: loc})
	}
	return out
}

// readDistInfo reads Name and Version from a Python distribution's METADATA.
func readDistInfo(root *os.Root, dir string) (Package, bool) {
	var name, version string
	for line := range strings.Lines(string(readSmall(root, path.Join(dir, "METADATA")))) {
		line = strings.TrimRight(line, "\r\n")
		if line == "" {
			break // end of the headers
		}
		if v, ok := strings.CutPrefix(line, "Name: "); ok && name == "" {
			name = strings.TrimSpace(v)
		}
		if v, ok := strings.CutPrefix(line, "Version: "); ok && version == "" {
			version = strings.TrimSpace(v)
		}
	}
	if name == "" || version == "" {
		return Package{}, false
	}
	return Package{Ecosystem: "PyPI", Name: pypiName(name), Version: version, Location: "/" + dir}, true
}

var pypiSep = regexp.MustCompile(`[-_.]+`)

// pypiName normalises a Python project name as PEP 503 does (and OSV's
// PyPI records are matched): lower case, runs of -_. as one -.
func pypiName(n string) string { return pypiSep.ReplaceAllString(strings.ToLower(n), "-") }
