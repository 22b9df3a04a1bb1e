package scan

import (
	"cmp"
	"strings"

	pep440 "github.com/aquasecurity/go-pep440-version"
	apkversion "github.com/knqyf263/go-apk-version"
	debversion "github.com/knqyf263/go-deb-version"
	"golang.org/x/mod/semver"
)

// compareFunc orders two versions of one ecosystem: -1, 0 or +1, or an
// error if either cannot be read.
type compareFunc func(a, b string) (int, error)

// ecosystemBase is an OSV ecosystem without its release: Debian:12 → Debian.
func ecosystemBase(eco string) string {
	base, _, _ := strings.Cut(eco, ":")
	return base
}

func isGo(eco string) bool { return eco == "Go" }

// comparator returns how versions in a range of type rangeType of ecosystem
// eco are ordered, or nil when convoy cannot order them (GIT ranges, an
// ecosystem it does not know).
func comparator(eco, rangeType string) compareFunc {
	switch rangeType {
	case "SEMVER":
		return compareSemver
	case "ECOSYSTEM":
	default:
		return nil
	}
	switch ecosystemBase(eco) {
	case "Debian", "Ubuntu":
		return compareDebian
	case "Alpine":
		return compareAlpine
	case "Go":
		return compareSemver
	case "PyPI":
		return comparePyPI
	}
	return nil
}

// Ecosystems convoy can match; a package of another is counted as skipped.
func supportedEcosystem(eco string) bool {
	switch ecosystemBase(eco) {
	case "Debian", "Ubuntu", "Alpine", "Go", "PyPI":
		return true
	}
	return false
}

func compareDebian(a, b string) (int, error) {
	va, err := debversion.NewVersion(a)
	if err != nil {
		return 0, err
	}
	vb, err := debversion.NewVersion(b)
	if err != nil {
		return 0, err
	}
	return sign(va.Compare(vb)), nil
}

func compareAlpine(a, b string) (int, error) {
	va, err := apkversion.NewVersion(a)
	if err != nil {
		return 0, err
	}
	vb, err := apkversion.NewVersion(b)
	if err != nil {
		return 0, err
	}
	return sign(va.Compare(vb)), nil
}

func comparePyPI(a, b string) (int, error) {
	va, err := pep440.Parse(a)
	if err != nil {
		return 0, err
	}
	vb, err := pep440.Parse(b)
	if err != nil {
		return 0, err
	}
	return sign(va.Compare(vb)), nil
}

// compareSemver orders semantic versions with or without the leading "v":
// Go modules report v1.2.3, OSV's Go records (and the standard library's
// versions) write 1.2.3.
func compareSemver(a, b string) (int, error) {
	va, vb := withV(a), withV(b)
	if !semver.IsValid(va) {
		return 0, errBadVersion(a)
	}
	if !semver.IsValid(vb) {
		return 0, errBadVersion(b)
	}
	return semver.Compare(va, vb), nil
}

func sameGoVersion(a, b string) bool {
	c, err := compareSemver(a, b)
	return err == nil && c == 0
}

func withV(v string) string {
	if strings.HasPrefix(v, "v") {
		return v
	}
	return "v" + v
}

type errBadVersion string

func (e errBadVersion) Error() string { return "not a semantic version: " + string(e) }

// goStdlibVersion turns a Go toolchain version (go1.22.3, go1.21,
// go1.23rc1, "go1.22.0 X:boringcrypto") into the version OSV's Go records
// give the standard library (1.22.3, 1.21.0, 1.23.0-rc.1), or "" for a
// development toolchain.
func goStdlibVersion(gov string) string {
	v, _, _ := strings.Cut(gov, " ")
	v, ok := strings.CutPrefix(v, "go")
	if !ok || v == "" || strings.Contains(v, "devel") {
		return ""
	}
	v, _, _ = strings.Cut(v, "-") // go1.24.0-fips… build suffixes
	pre := ""
	for _, tag := range []string{"rc", "beta", "alpha"} {
		if i := strings.Index(v, tag); i > 0 {
			pre = "-" + tag + "." + v[i+len(tag):]
			v = v[:i]
			break
		}
	}
	switch strings.Count(v, ".") {
	case 0:
		v += ".0.0"
	case 1:
		v += ".0"
	}
	if !semver.IsValid("v" + v + pre) {
		return ""
	}
	return v + pre
}

// sign reduces a library's comparison (go-deb-version returns differences)
// to -1, 0 or +1.
func sign(c int) int { return cmp.Compare(c, 0) }
