package policy

import (
	"bytes"
	"encoding/base64"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// family is what a condition operator compares.
type family int

const (
	famString family = iota
	famStringFold
	famStringLike
	famNumeric
	famDate
	famBool
	famBinary
	famIP
	famARN
	famNull
)

// comparison is the relation numeric and date operators test, context value
// on the left: NumericLessThan means context < policy.
type comparison int

const (
	cmpEq comparison = iota
	cmpLt
	cmpLe
	cmpGt
	cmpGe
)

type baseOperator struct {
	fam     family
	cmp     comparison
	negated bool
}

var baseOperators = map[string]baseOperator{
	"StringEquals":              {fam: famString},
	"StringNotEquals":           {fam: famString, negated: true},
	"StringEqualsIgnoreCase":    {fam: famStringFold},
	"StringNotEqualsIgnoreCase": {fam: famStringFold, negated: true},
	"StringLike":                {fam: famStringLike},
	"StringNotLike":             {fam: famStringLike, negated: true},
	"NumericEquals":             {fam: famNumeric},
	"NumericNotEquals":          {fam: famNumeric, negated: true},
	"NumericLessThan":           {fam: famNumeric, cmp: cmpLt},
	"NumericLessThanEquals":     {fam: famNumeric, cmp: cmpLe},
	"NumericGreaterThan":        {fam: famNumeric, cmp: cmpGt},
	"NumericGreaterThanEquals":  {fam: famNumeric, cmp: cmpGe},
	"DateEquals":                {fam: famDate},
	"DateNotEquals":             {fam: famDate, negated: true},
	"DateLessThan":              {fam: famDate, cmp: cmpLt},
	"DateLessThanEquals":        {fam: famDate, cmp: cmpLe},
	"DateGreaterThan":           {fam: famDate, cmp: cmpGt},
	"DateGreaterThanEquals":     {fam: famDate, cmp: cmpGe},
	"Bool":                      {fam: famBool},
	"BinaryEquals":              {fam: famBinary},
	"IpAddress":                 {fam: famIP},
	"NotIpAddress":              {fam: famIP, negated: true},
	"ArnEquals":                 {fam: famARN},
	"ArnLike":                   {fam: famARN},
	"ArnNotEquals":              {fam: famARN, negated: true},
	"ArnNotLike":                {fam: famARN, negated: true},
	"Null":                      {fam: famNull},
}

// setQualifier is the ForAnyValue:/ForAllValues: prefix of an operator.
type setQualifier int

const (
	setNone setQualifier = iota
	setAny
	setAll
)

type operator struct {
	baseOperator
	set      setQualifier
	ifExists bool
}

// parseOperator parses a condition operator name such as
// "ForAnyValue:StringLikeIfExists". Names are case-sensitive, as written in
// the IAM documentation.
func parseOperator(name string) (operator, bool) {
	var op operator
	if rest, ok := strings.CutPrefix(name, "ForAnyValue:"); ok {
		op.set, name = setAny, rest
	} else if rest, ok := strings.CutPrefix(name, "ForAllValues:"); ok {
		op.set, name = setAll, rest
	}
	if rest, ok := strings.CutSuffix(name, "IfExists"); ok {
		op.ifExists, name = true, rest
	}
	b, ok := baseOperators[name]
	if !ok || (b.fam == famNull && (op.set != setNone || op.ifExists)) {
		return operator{}, false
	}
	op.baseOperator = b
	return op, true
}

// matchCondition reports whether every key under one operator matches.
// An operator it does not know never matches; Parse rejects those.
func matchCondition(opName string, keys map[string][]string, ctx map[string][]string, vars bool) bool {
	op, ok := parseOperator(opName)
	if !ok {
		return false
	}
	for key, want := range keys {
		if !op.matchKey(lookup(ctx, key), want, ctx, vars) {
			return false
		}
	}
	return true
}

// matchKey applies the operator to one condition key: have are the request's
// values for the key, want the policy's.
func (op operator) matchKey(have, want []string, ctx map[string][]string, vars bool) bool {
	if op.fam == famNull {
		for _, w := range want {
			switch {
			case strings.EqualFold(w, "true") && len(have) == 0,
				strings.EqualFold(w, "false") && len(have) > 0:
				return true
			}
		}
		return false
	}
	if len(have) == 0 {
		switch {
		case op.ifExists:
			return true
		case op.set == setAny:
			return false
		case op.set == setAll:
			return true
		}
		return op.negated
	}
	// One context value satisfies a negated operator when it matches none
	// of the policy values.
	one := func(v string) bool { return op.positive(v, want, ctx, vars) != op.negated }
	if op.set == setAll || (op.set == setNone && op.negated) {
		for _, v := range have {
			if !one(v) {
				return false
			}
		}
		return true
	}
	for _, v := range have {
		if one(v) {
			return true
		}
	}
	return false
}

// positive reports whether the context value v matches any policy value
// under the operator's positive form.
func (op operator) positive(v string, want []string, ctx map[string][]string, vars bool) bool {
	switch op.fam {
	case famString, famStringFold, famStringLike, famARN:
		for _, w := range want {
			lit := []bool(nil)
			if vars {
				var ok bool
				if w, lit, ok = expand(w, ctx); !ok {
					continue
				}
			}
			if matchString(op.fam, w, lit, v) {
				return true
			}
		}
	case famNumeric:
		x, ok := parseNumber(v)
		if !ok {
			return false
		}
		for _, w := range want {
			if y, ok := parseNumber(w); ok && op.cmp.holds(x.compare(y)) {
				return true
			}
		}
	case famDate:
		x, ok := parseDate(v)
		if !ok {
			return false
		}
		for _, w := range want {
			if y, ok := parseDate(w); ok && op.cmp.holds(x.compare(y)) {
				return true
			}
		}
	case famBool:
		x, ok := parseBool(v)
		if !ok {
			return false
		}
		for _, w := range want {
			if y, ok := parseBool(w); ok && x == y {
				return true
			}
		}
	case famBinary:
		x, ok := parseBinary(v)
		if !ok {
			return false
		}
		for _, w := range want {
			if y, ok := parseBinary(w); ok && bytes.Equal(x, y) {
				return true
			}
		}
	case famIP:
		addr, err := netip.ParseAddr(v)
		if err != nil {
			return false
		}
		addr = addr.Unmap()
		for _, w := range want {
			if p, ok := parsePrefix(w); ok && p.Contains(addr) {
				return true
			}
		}
	}
	return false
}

func matchString(fam family, w string, lit []bool, v string) bool {
	switch fam {
	case famString:
		return w == v
	case famStringFold:
		return strings.EqualFold(w, v)
	case famStringLike:
		return globMatch(w, lit, v, false)
	case famARN:
		return arnLike(w, lit, v)
	}
	return false
}

// arnLike compares an ARN with a pattern component by component: each of the
// six colon-separated parts is globbed on its own, so '*' never spans a
// colon in the first five. A pattern with fewer parts globs its last part
// against the rest of the ARN ("arn:aws:s3:*" matches any S3 ARN).
func arnLike(pattern string, lit []bool, value string) bool {
	v := strings.SplitN(value, ":", 6)
	if len(v) != 6 {
		return false
	}
	start := 0
	for i := range 6 {
		end := len(pattern)
		if i < 5 {
			if j := strings.IndexByte(pattern[start:], ':'); j >= 0 {
				end = start + j
			}
		}
		var pl []bool
		if lit != nil {
			pl = lit[start:end]
		}
		last := end == len(pattern)
		name := v[i]
		if last && i < 5 {
			name = strings.Join(v[i:], ":")
		}
		if !globMatch(pattern[start:end], pl, name, false) {
			return false
		}
		if last {
			return true
		}
		start = end + 1
	}
	return true
}

func (c comparison) holds(order int) bool {
	switch c {
	case cmpEq:
		return order == 0
	case cmpLt:
		return order < 0
	case cmpLe:
		return order <= 0
	case cmpGt:
		return order > 0
	case cmpGe:
		return order >= 0
	}
	return false
}

// number is a condition number. Integers compare exactly; anything else as
// float64.
type number struct {
	isInt bool
	i     int64
	f     float64
}

// parseNumber accepts decimal numbers: an optional sign, digits with an
// optional fraction, and an optional exponent. Hex, NaN and Inf are not
// numbers in a policy.
func parseNumber(s string) (number, bool) {
	if !isDecimal(s) {
		return number{}, false
	}
	if i, err := strconv.ParseInt(s, 10, 64); err == nil {
		return number{isInt: true, i: i, f: float64(i)}, true
	}
	// s is well-formed, so the only error is ErrRange, for which ParseFloat
	// returns ±Inf or 0; both still order correctly.
	f, _ := strconv.ParseFloat(s, 64)
	return number{f: f}, true
}

func isDecimal(s string) bool {
	i := 0
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		i++
	}
	digits := 0
	for ; i < len(s) && '0' <= s[i] && s[i] <= '9'; i++ {
		digits++
	}
	if i < len(s) && s[i] == '.' {
		i++
		for ; i < len(s) && '0' <= s[i] && s[i] <= '9'; i++ {
			digits++
		}
	}
	if digits == 0 {
		return false
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		exp := 0
		for ; i < len(s) && '0' <= s[i] && s[i] <= '9'; i++ {
			exp++
		}
		if exp == 0 {
			return false
		}
	}
	return i == len(s)
}

func (x number) compare(y number) int {
	if x.isInt && y.isInt {
		switch {
		case x.i < y.i:
			return -1
		case x.i > y.i:
			return 1
		}
		return 0
	}
	switch {
	case x.f < y.f:
		return -1
	case x.f > y.f:
		return 1
	}
	return 0
}

// instant is a point in time as Unix seconds and nanoseconds; it covers epoch
// values that time.Time cannot hold.
type instant struct {
	sec  int64
	nsec int64
}

func (x instant) compare(y instant) int {
	switch {
	case x.sec < y.sec, x.sec == y.sec && x.nsec < y.nsec:
		return -1
	case x.sec == y.sec && x.nsec == y.nsec:
		return 0
	}
	return 1
}

// parseDate accepts epoch seconds (digits only) and ISO 8601 dates and
// times: "2024-05-01", "2024-05-01T12:00:00Z", "2024-05-01T12:00:00.5+02:00",
// the basic form "20240501T120000Z", and the reduced precisions in between
// ("2024-05", "2024-05-01T12", "2024-05-01T12:30"). A time without a zone is
// UTC.
func parseDate(s string) (instant, bool) {
	if s != "" && strings.Trim(s, "0123456789") == "" {
		sec, err := strconv.ParseInt(s, 10, 64)
		return instant{sec: sec}, err == nil
	}
	if t, err := time.Parse("20060102T150405Z0700", s); err == nil {
		return instant{sec: t.Unix(), nsec: int64(t.Nanosecond())}, true
	}
	t, ok := parseISO8601(s)
	if !ok {
		return instant{}, false
	}
	return instant{sec: t.Unix(), nsec: int64(t.Nanosecond())}, true
}

func parseISO8601(s string) (time.Time, bool) {
	p := isoParser{s: s}
	year, ok := p.digits(4)
	if !ok {
		return time.Time{}, false
	}
	month, day := 1, 1
	if p.accept('-') {
		if month, ok = p.digits(2); !ok || month < 1 || month > 12 {
			return time.Time{}, false
		}
		if p.accept('-') {
			if day, ok = p.digits(2); !ok || day < 1 || day > daysIn(year, month) {
				return time.Time{}, false
			}
		}
	}
	var hour, minute, second, nsec int
	if p.accept('T') || p.accept('t') {
		if hour, ok = p.digits(2); !ok || hour > 23 {
			return time.Time{}, false
		}
		if p.accept(':') {
			if minute, ok = p.digits(2); !ok || minute > 59 {
				return time.Time{}, false
			}
			if p.accept(':') {
				if second, ok = p.digits(2); !ok || second > 59 {
					return time.Time{}, false
				}
				if p.accept('.') || p.accept(',') {
					if nsec, ok = p.fraction(); !ok {
						return time.Time{}, false
					}
				}
			}
		}
	}
	loc := time.UTC
	switch {
	case p.accept('Z') || p.accept('z'):
	case p.peek('+') || p.peek('-'):
		sign := 1
		if p.accept('-') {
			sign = -1
		} else {
			p.accept('+')
		}
		zh, ok := p.digits(2)
		if !ok || zh > 23 {
			return time.Time{}, false
		}
		zm := 0
		if p.accept(':') || !p.done() {
			if zm, ok = p.digits(2); !ok || zm > 59 {
				return time.Time{}, false
			}
		}
		loc = time.FixedZone("", sign*(zh*3600+zm*60))
	}
	if !p.done() {
		return time.Time{}, false
	}
	return time.Date(year, time.Month(month), day, hour, minute, second, nsec, loc), true
}

type isoParser struct {
	s string
	i int
}

func (p *isoParser) done() bool { return p.i == len(p.s) }

func (p *isoParser) peek(c byte) bool { return p.i < len(p.s) && p.s[p.i] == c }

func (p *isoParser) accept(c byte) bool {
	if p.peek(c) {
		p.i++
		return true
	}
	return false
}

func (p *isoParser) digits(n int) (int, bool) {
	if p.i+n > len(p.s) {
		return 0, false
	}
	v := 0
	for _, c := range []byte(p.s[p.i : p.i+n]) {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + int(c-'0')
	}
	p.i += n
	return v, true
}

// fraction reads fractional seconds as nanoseconds; digits past the ninth are
// dropped.
func (p *isoParser) fraction() (int, bool) {
	ns, n := 0, 0
	for p.i < len(p.s) && '0' <= p.s[p.i] && p.s[p.i] <= '9' {
		if n < 9 {
			ns = ns*10 + int(p.s[p.i]-'0')
			n++
		}
		p.i++
	}
	if n == 0 {
		return 0, false
	}
	for ; n < 9; n++ {
		ns *= 10
	}
	return ns, true
}

func daysIn(year, month int) int {
	return time.Date(year, time.Month(month)+1, 0, 0, 0, 0, 0, time.UTC).Day()
}

func parseBool(s string) (bool, bool) {
	switch {
	case strings.EqualFold(s, "true"):
		return true, true
	case strings.EqualFold(s, "false"):
		return false, true
	}
	return false, false
}

func parseBinary(s string) ([]byte, bool) {
	if b, err := base64.StdEncoding.DecodeString(s); err == nil {
		return b, true
	}
	b, err := base64.RawStdEncoding.DecodeString(s)
	return b, err == nil
}

// parsePrefix accepts a CIDR block or a single address, IPv4 or IPv6.
func parsePrefix(s string) (netip.Prefix, bool) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, false
		}
		if p.Addr().Is4In6() {
			// An IPv4-mapped block covers the IPv4 addresses it maps.
			bits := p.Bits() - 96
			if bits < 0 {
				return netip.Prefix{}, false
			}
			p = netip.PrefixFrom(p.Addr().Unmap(), bits)
		}
		return p.Masked(), true
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), true
}
