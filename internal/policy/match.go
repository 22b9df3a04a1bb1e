package policy

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// globMatch reports whether name matches pattern, where '*' matches any run
// of characters (including none) and '?' exactly one. lit, when not nil, is
// indexed by byte offset in pattern and marks characters that came from a
// policy variable or an escape and are therefore never wildcards. fold makes
// the comparison case-insensitive.
//
// It is the iterative algorithm with a single backtrack point, so it runs in
// O(len(pattern)*len(name)) at worst, whatever the input.
func globMatch(pattern string, lit []bool, name string, fold bool) bool {
	wild := func(i int) byte {
		if c := pattern[i]; (c == '*' || c == '?') && (lit == nil || !lit[i]) {
			return c
		}
		return 0
	}
	p, n := 0, 0
	star, starN := -1, 0 // pattern offset just after the last '*', and where in name it resumed
	for n < len(name) {
		if p < len(pattern) {
			switch wild(p) {
			case '*':
				p++
				star, starN = p, n
				continue
			case '?':
				_, w := utf8.DecodeRuneInString(name[n:])
				p++
				n += w
				continue
			}
			if pw, nw, ok := sameRune(pattern[p:], name[n:], fold); ok {
				p += pw
				n += nw
				continue
			}
		}
		if star < 0 {
			return false
		}
		// Let the last '*' swallow one more character and retry.
		_, w := utf8.DecodeRuneInString(name[starN:])
		starN += w
		p, n = star, starN
	}
	for ; p < len(pattern); p++ {
		if wild(p) != '*' {
			return false
		}
	}
	return true
}

// sameRune compares the first characters of a and b (a non-empty) and
// returns their widths in bytes.
func sameRune(a, b string, fold bool) (aw, bw int, ok bool) {
	if b == "" {
		return 0, 0, false
	}
	if a[0] < utf8.RuneSelf && b[0] < utf8.RuneSelf {
		x, y := a[0], b[0]
		if fold {
			x, y = lowerASCII(x), lowerASCII(y)
		}
		return 1, 1, x == y
	}
	ra, aw := utf8.DecodeRuneInString(a)
	rb, bw := utf8.DecodeRuneInString(b)
	if ra == utf8.RuneError || rb == utf8.RuneError {
		// Invalid UTF-8 compares byte for byte.
		return aw, bw, a[:aw] == b[:bw]
	}
	if ra == rb {
		return aw, bw, true
	}
	return aw, bw, fold && equalFoldRune(ra, rb)
}

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// equalFoldRune reports whether a and b are equal under Unicode simple case
// folding, as strings.EqualFold does for single runes.
func equalFoldRune(a, b rune) bool {
	for r := unicode.SimpleFold(a); r != a; r = unicode.SimpleFold(r) {
		if r == b {
			return true
		}
	}
	return false
}

// lookup returns the values of a context key, matching its name
// case-insensitively. An exact spelling wins; otherwise the values of every
// spelling that folds to key are joined, so the answer does not depend on map
// order.
func lookup(ctx map[string][]string, key string) []string {
	if v, ok := ctx[key]; ok {
		return v
	}
	var out []string
	n := 0
	for k, v := range ctx {
		if strings.EqualFold(k, key) {
			n++
			if n == 1 {
				out = v
			} else {
				out = append(append([]string(nil), out...), v...)
			}
		}
	}
	return out
}

// expand substitutes the policy variables of s from ctx. The result's lit
// marks the bytes that came from a substitution or an escape (${*}, ${?},
// ${$}), which are literal even where '*' and '?' are wildcards; it is nil
// when s has no variables. ok is false when a variable has no single value
// and no default.
//
// A variable is ${key} or ${key, 'default'}. Text that does not parse as a
// variable is kept as written.
func expand(s string, ctx map[string][]string) (out string, lit []bool, ok bool) {
	if !strings.Contains(s, "${") {
		return s, nil, true
	}
	var b strings.Builder
	b.Grow(len(s) + 32)
	lit = make([]bool, 0, len(s)+32)
	add := func(text string, literal bool) {
		b.WriteString(text)
		for range len(text) {
			lit = append(lit, literal)
		}
	}
	for {
		i := strings.Index(s, "${")
		if i < 0 {
			add(s, false)
			break
		}
		add(s[:i], false)
		end := strings.IndexByte(s[i:], '}')
		if end < 0 {
			add(s[i:], false)
			break
		}
		body := s[i+2 : i+end]
		s = s[i+end+1:]
		switch body {
		case "*", "?", "$":
			add(body, true)
			continue
		}
		key, def, hasDef, valid := parseVariable(body)
		if !valid {
			add("${"+body+"}", false)
			continue
		}
		vals := lookup(ctx, key)
		switch {
		case len(vals) == 1:
			add(vals[0], true)
		case hasDef:
			add(def, true)
		default:
			return "", nil, false
		}
	}
	return b.String(), lit, true
}

// parseVariable splits the inside of ${...} into a key and an optional
// default, written as ${key, 'default'}.
func parseVariable(body string) (key, def string, hasDef, ok bool) {
	key = body
	if i := strings.IndexByte(body, ','); i >= 0 {
		key = body[:i]
		d := strings.TrimSpace(body[i+1:])
		if len(d) < 2 || d[0] != '\'' || d[len(d)-1] != '\'' {
			return "", "", false, false
		}
		def, hasDef = d[1:len(d)-1], true
	}
	key = strings.TrimSpace(key)
	if key == "" || strings.ContainsAny(key, "${'") {
		return "", "", false, false
	}
	return key, def, hasDef, true
}

// arn is an ARN split into its six colon-separated parts; the resource part
// keeps any further colons.
type arn struct {
	partition, service, region, account, resource string
}

func parseARN(s string) (arn, bool) {
	parts := strings.SplitN(s, ":", 6)
	if len(parts) != 6 || parts[0] != "arn" {
		return arn{}, false
	}
	return arn{parts[1], parts[2], parts[3], parts[4], parts[5]}, true
}

// identity is one link of a caller's principal chain.
type identity struct {
	kind      identityKind
	name      string // idExact: the principal string; idRole: the role name
	account   string // idRole, idAccount
	partition string // idRole, idAccount; empty when unknown
}

type identityKind int

const (
	idExact     identityKind = iota // a principal named by its full ARN or service name
	idRole                          // the role behind an assumed-role session
	idAccount                       // the caller's account
	idAnonymous                     // no principal at all; only "*" names it
)

// identities is a caller's principal chain; it is an array so that
// evaluating a principal does not allocate.
type identities struct {
	ids [3]identity
	n   int
}

func (c *identities) add(id identity) {
	c.ids[c.n] = id
	c.n++
}

func (c *identities) list() []identity { return c.ids[:c.n] }

// chain returns the identities req's caller stands for. See the package doc.
func chain(req *Request) identities {
	p, acct, part := req.Principal, req.PrincipalAccount, ""
	a, isARN := parseARN(p)
	if isARN {
		part = a.partition
		if acct == "" {
			acct = a.account
		}
	}
	var ids identities
	switch {
	case isARN && a.service == "iam" && a.resource == "root":
		// The root user is its account.
	case isARN && a.service == "sts" && strings.HasPrefix(a.resource, "assumed-role/"):
		role, _, _ := strings.Cut(strings.TrimPrefix(a.resource, "assumed-role/"), "/")
		ids.add(identity{kind: idExact, name: p})
		ids.add(identity{kind: idRole, name: role, account: acct, partition: part})
	case p != "":
		ids.add(identity{kind: idExact, name: p})
	}
	if acct != "" {
		ids.add(identity{kind: idAccount, account: acct, partition: part})
	}
	if ids.n == 0 {
		ids.add(identity{kind: idAnonymous})
	}
	return ids
}

// matchesAny reports whether p names any identity of the caller.
func (p *Principals) matchesAny(req *Request) bool {
	ids := chain(req)
	for _, id := range ids.list() {
		if p.names(id) {
			return true
		}
	}
	return false
}

// missesAny reports whether some identity of the caller is not named by p,
// which is when a NotPrincipal element applies.
func (p *Principals) missesAny(req *Request) bool {
	ids := chain(req)
	for _, id := range ids.list() {
		if !p.names(id) {
			return true
		}
	}
	return false
}

func (p *Principals) names(id identity) bool {
	if p.Any {
		return true
	}
	for _, e := range p.AWS {
		if awsNames(e, id) {
			return true
		}
	}
	if id.kind != idExact {
		return false
	}
	for _, list := range [...][]string{p.Service, p.Federated, p.CanonicalUser} {
		for _, e := range list {
			if e == id.name {
				return true
			}
		}
	}
	return false
}

// awsNames reports whether one entry of a Principal's "AWS" list names id.
func awsNames(entry string, id identity) bool {
	if entry == "*" {
		return true
	}
	if isAccountID(entry) {
		return id.kind == idAccount && id.account == entry
	}
	a, ok := parseARN(entry)
	samePartition := ok && (id.partition == "" || id.partition == a.partition)
	switch {
	case ok && a.service == "iam" && a.resource == "root":
		return id.kind == idAccount && id.account == a.account && samePartition
	case ok && a.service == "iam" && strings.HasPrefix(a.resource, "role/"):
		if id.kind == idRole {
			// Sessions carry the role's name but not its path.
			name := a.resource[strings.LastIndexByte(a.resource, '/')+1:]
			return name != "" && id.name == name && id.account == a.account && samePartition
		}
	}
	return id.kind == idExact && id.name == entry
}

func isAccountID(s string) bool {
	if len(s) != 12 {
		return false
	}
	for i := range len(s) {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
