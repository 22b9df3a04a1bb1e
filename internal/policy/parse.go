package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
)

// MaxDocumentSize is the largest document Parse reads. AWS limits are
// smaller and differ by policy type; callers enforce those.
const MaxDocumentSize = 128 << 10

// maxDepth bounds JSON nesting; a valid policy nests five levels at most.
const maxDepth = 16

// MalformedError reports a policy document that is not valid. Msg is written
// to be returned as the message of an AWS MalformedPolicyDocument error.
type MalformedError struct{ Msg string }

func (e *MalformedError) Error() string { return e.Msg }

func malformed(format string, args ...any) error {
	return &MalformedError{Msg: fmt.Sprintf(format, args...)}
}

// syntaxError is a MalformedError in the family IAM reports as "Syntax
// errors in policy.", with the detail IAM leaves out.
func syntaxError(format string, args ...any) error {
	return &MalformedError{Msg: "Syntax errors in policy: " + fmt.Sprintf(format, args...) + "."}
}

// Parse parses and validates an identity, session or resource policy
// document: every statement needs an Effect of Allow or Deny, exactly one of
// Action and NotAction, and exactly one of Resource and NotResource.
// Principal and NotPrincipal are accepted (resource policies carry them);
// whether a document may name principals is the caller's decision. Errors
// are *MalformedError.
func Parse(doc string) (*Document, error) {
	return parse(doc, false)
}

// ParseTrust parses and validates a role trust policy: as Parse, but every
// statement needs a Principal and may not have Resource or NotResource (the
// resource is the role). NotPrincipal is rejected, as IAM does for trust
// policies. Errors are *MalformedError.
func ParseTrust(doc string) (*Document, error) {
	return parse(doc, true)
}

func parse(doc string, trust bool) (*Document, error) {
	if len(doc) > MaxDocumentSize {
		return nil, malformed("Policy document is %d bytes; the limit is %d.", len(doc), MaxDocumentSize)
	}
	root, err := decodeJSON(doc)
	if err != nil {
		return nil, err
	}
	top, ok := root.(map[string]any)
	if !ok {
		return nil, syntaxError("the document is not a JSON object")
	}
	for _, k := range sortedKeys(top) {
		switch k {
		case "Version", "Id", "Statement":
		default:
			return nil, syntaxError("unknown element %q", k)
		}
	}
	d := &Document{}
	if v, ok := top["Version"]; ok {
		s, _ := v.(string)
		if s != "2012-10-17" && s != "2008-10-17" {
			return nil, syntaxError(`Version must be "2012-10-17" or "2008-10-17"`)
		}
		d.Version = s
	}
	if v, ok := top["Id"]; ok {
		if d.ID, ok = v.(string); !ok {
			return nil, syntaxError("Id must be a string")
		}
	}
	var raw []any
	switch v := top["Statement"].(type) {
	case map[string]any:
		raw = []any{v}
	case []any:
		raw = v
	case nil:
		return nil, syntaxError("the document has no Statement")
	default:
		return nil, syntaxError("Statement must be an object or an array of objects")
	}
	if len(raw) == 0 {
		return nil, syntaxError("Statement is empty")
	}
	sids := make(map[string]bool)
	for i, r := range raw {
		m, ok := r.(map[string]any)
		if !ok {
			return nil, syntaxError("Statement %d is not an object", i+1)
		}
		s, err := parseStatement(m, i+1, trust)
		if err != nil {
			return nil, err
		}
		if s.Sid != "" {
			if sids[s.Sid] {
				return nil, malformed("Statement IDs (SID) in a single policy must be unique.")
			}
			sids[s.Sid] = true
		}
		s.literalVars = d.Version != "2012-10-17"
		d.Statements = append(d.Statements, s)
	}
	return d, nil
}

func parseStatement(m map[string]any, n int, trust bool) (Statement, error) {
	var s Statement
	for _, k := range sortedKeys(m) {
		switch k {
		case "Sid", "Effect", "Principal", "NotPrincipal", "Action", "NotAction",
			"Resource", "NotResource", "Condition":
		default:
			return s, syntaxError("Statement %d has unknown element %q", n, k)
		}
	}
	if v, ok := m["Sid"]; ok {
		if s.Sid, ok = v.(string); !ok {
			return s, syntaxError("Sid of statement %d must be a string", n)
		}
	}

	effect, ok := m["Effect"]
	if !ok {
		return s, syntaxError("Statement %d has no Effect", n)
	}
	s.Effect, _ = effect.(string)
	if s.Effect != "Allow" && s.Effect != "Deny" {
		return s, malformed("Invalid effect in statement %d: Effect must be \"Allow\" or \"Deny\".", n)
	}

	_, hasP := m["Principal"]
	_, hasNP := m["NotPrincipal"]
	switch {
	case hasP && hasNP:
		return s, syntaxError("Statement %d has both Principal and NotPrincipal", n)
	case trust && hasNP:
		return s, malformed("Has prohibited field NotPrincipal.")
	case trust && !hasP:
		return s, malformed("Missing required field Principal.")
	}
	var err error
	if hasP {
		if s.Principal, err = parsePrincipals(m["Principal"]); err != nil {
			return s, err
		}
	}
	if hasNP {
		if s.NotPrincipal, err = parsePrincipals(m["NotPrincipal"]); err != nil {
			return s, err
		}
	}

	if s.Action, s.NotAction, err = actionLike(m, n, "Action", "NotAction"); err != nil {
		return s, err
	}
	if len(s.Action) == 0 && len(s.NotAction) == 0 {
		return s, malformed("Policy statement must contain actions.")
	}
	for _, a := range append(slices.Clip(s.Action), s.NotAction...) {
		if err := checkAction(a); err != nil {
			return s, err
		}
	}

	if s.Resource, s.NotResource, err = actionLike(m, n, "Resource", "NotResource"); err != nil {
		return s, err
	}
	switch {
	case trust && s.Resource != nil:
		return s, malformed("Has prohibited field Resource.")
	case trust && s.NotResource != nil:
		return s, malformed("Has prohibited field NotResource.")
	case !trust && len(s.Resource) == 0 && len(s.NotResource) == 0:
		return s, malformed("Policy statement must contain resources.")
	}
	for _, r := range append(slices.Clip(s.Resource), s.NotResource...) {
		if !validResource(r) {
			return s, malformed("Resource %s must be in ARN format or \"*\".", r)
		}
	}

	if v, ok := m["Condition"]; ok {
		if s.Condition, err = parseCondition(v, n); err != nil {
			return s, err
		}
	}
	return s, nil
}

// actionLike reads a pair of mutually exclusive string-list elements
// (Action/NotAction, Resource/NotResource). An absent element is nil; a
// present one is never nil, even when it is an empty array.
func actionLike(m map[string]any, n int, name, notName string) (list, notList []string, err error) {
	v, has := m[name]
	nv, hasNot := m[notName]
	if has && hasNot {
		return nil, nil, syntaxError("Statement %d has both %s and %s", n, name, notName)
	}
	if has {
		if list, err = stringList(v); err != nil {
			return nil, nil, syntaxError("%s of statement %d must be a string or an array of strings", name, n)
		}
	}
	if hasNot {
		if notList, err = stringList(nv); err != nil {
			return nil, nil, syntaxError("%s of statement %d must be a string or an array of strings", notName, n)
		}
	}
	return list, notList, nil
}

var errNotStrings = errors.New("not a string or an array of strings")

func stringList(v any) ([]string, error) {
	switch t := v.(type) {
	case string:
		return []string{t}, nil
	case []any:
		out := make([]string, 0, len(t))
		for _, e := range t {
			s, ok := e.(string)
			if !ok {
				return nil, errNotStrings
			}
			out = append(out, s)
		}
		return out, nil
	}
	return nil, errNotStrings
}

func checkAction(a string) error {
	if a == "*" {
		return nil
	}
	vendor, name, ok := strings.Cut(a, ":")
	switch {
	case !ok:
		return malformed("Actions/Conditions must be prefaced by a vendor, e.g., iam, sdb, ec2, etc.")
	case strings.Contains(name, ":"):
		return malformed("Actions/Condition can contain only one colon.")
	case vendor != "*" && !validVendor(vendor):
		return malformed("Vendor %s is not valid", vendor)
	}
	return nil
}

func validVendor(v string) bool {
	if v == "" {
		return false
	}
	for i := range len(v) {
		c := v[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// validResource accepts "*" and ARNs, which may be abbreviated by a trailing
// wildcard ("arn:aws:s3:*") but must name a vendor.
func validResource(r string) bool {
	if r == "*" {
		return true
	}
	parts := strings.SplitN(r, ":", 4)
	return len(parts) >= 3 && parts[0] == "arn" && parts[1] != "" && parts[2] != ""
}

func parsePrincipals(v any) (*Principals, error) {
	switch t := v.(type) {
	case string:
		if t == "*" {
			return &Principals{Any: true}, nil
		}
		return nil, malformed("Invalid principal in policy: %q", t)
	case map[string]any:
		if len(t) == 0 {
			return nil, malformed("Invalid principal in policy: the principal is empty.")
		}
		p := &Principals{}
		for _, k := range sortedKeys(t) {
			list, err := stringList(t[k])
			if err != nil || len(list) == 0 {
				return nil, malformed("Invalid principal in policy: %q must be a string or a non-empty array of strings.", k)
			}
			for _, e := range list {
				if !validPrincipal(k, e) {
					return nil, malformed("Invalid principal in policy: %q:%q", k, e)
				}
			}
			switch k {
			case "AWS":
				p.AWS = list
			case "Service":
				p.Service = list
			case "Federated":
				p.Federated = list
			case "CanonicalUser":
				p.CanonicalUser = list
			}
		}
		return p, nil
	}
	return nil, malformed("Invalid principal in policy: the principal must be \"*\" or an object.")
}

// validPrincipal checks one principal entry. Principals do not take
// wildcards, except an AWS principal that is exactly "*".
func validPrincipal(kind, e string) bool {
	switch kind {
	case "AWS":
		if e == "*" || isAccountID(e) || isUniqueID(e) {
			return true
		}
		a, ok := parseARN(e)
		return ok && (a.service == "iam" || a.service == "sts") && a.resource != "" &&
			!strings.ContainsAny(e, "*?")
	case "Service", "Federated", "CanonicalUser":
		return e != "" && !strings.ContainsAny(e, "*? ")
	}
	return false
}

// isUniqueID reports whether s looks like an IAM unique ID (AIDA..., AROA...),
// which IAM writes into a policy in place of a deleted principal's ARN.
func isUniqueID(s string) bool {
	if len(s) < 16 || len(s) > 128 || s[0] != 'A' {
		return false
	}
	for i := range len(s) {
		if c := s[i]; !('A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
			return false
		}
	}
	return true
}

func parseCondition(v any, n int) (map[string]map[string][]string, error) {
	ops, ok := v.(map[string]any)
	if !ok {
		return nil, syntaxError("Condition of statement %d must be an object", n)
	}
	out := make(map[string]map[string][]string, len(ops))
	for _, name := range sortedKeys(ops) {
		op, ok := parseOperator(name)
		if !ok {
			return nil, syntaxError("unknown condition operator %q in statement %d", name, n)
		}
		keys, ok := ops[name].(map[string]any)
		if !ok {
			return nil, syntaxError("condition operator %s of statement %d must map keys to values", name, n)
		}
		byKey := make(map[string][]string, len(keys))
		for _, key := range sortedKeys(keys) {
			if vendor, rest, ok := strings.Cut(key, ":"); !ok || vendor == "" || rest == "" {
				return nil, malformed("Actions/Conditions must be prefaced by a vendor, e.g., iam, sdb, ec2, etc.")
			}
			vals, err := conditionValues(keys[key])
			if err != nil {
				return nil, syntaxError("condition key %s of statement %d: %v", key, n, err)
			}
			for _, val := range vals {
				if !op.validValue(val) {
					return nil, malformed("Invalid value %q for condition operator %s, key %s, in statement %d.", val, name, key, n)
				}
			}
			byKey[key] = vals
		}
		out[name] = byKey
	}
	return out, nil
}

// conditionValues reads a condition value: a string, number or boolean, or a
// non-empty array of them. Numbers and booleans keep their JSON text.
func conditionValues(v any) ([]string, error) {
	one := func(e any) (string, bool) {
		switch t := e.(type) {
		case string:
			return t, true
		case json.Number:
			return t.String(), true
		case bool:
			if t {
				return "true", true
			}
			return "false", true
		}
		return "", false
	}
	if list, ok := v.([]any); ok {
		if len(list) == 0 {
			return nil, errors.New("values must not be empty")
		}
		out := make([]string, 0, len(list))
		for _, e := range list {
			s, ok := one(e)
			if !ok {
				return nil, errors.New("values must be strings, numbers or booleans")
			}
			out = append(out, s)
		}
		return out, nil
	}
	s, ok := one(v)
	if !ok {
		return nil, errors.New("value must be a string, number, boolean or array of them")
	}
	return []string{s}, nil
}

// validValue reports whether a policy value is of the operator's type.
// String and ARN values may hold anything, including policy variables.
func (op operator) validValue(v string) bool {
	switch op.fam {
	case famNumeric:
		_, ok := parseNumber(v)
		return ok
	case famDate:
		_, ok := parseDate(v)
		return ok
	case famBool, famNull:
		_, ok := parseBool(v)
		return ok
	case famBinary:
		_, ok := parseBinary(v)
		return ok
	case famIP:
		_, ok := parsePrefix(v)
		return ok
	}
	return true
}

// decodeJSON decodes a document into maps, slices, strings, json.Numbers,
// booleans and nils. Unlike encoding/json's own decoding it rejects
// duplicate object keys, which IAM and this package could otherwise read
// differently from a person reviewing the document.
func decodeJSON(doc string) (any, error) {
	dec := json.NewDecoder(strings.NewReader(doc))
	dec.UseNumber()
	v, err := readJSON(dec, 0)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, syntaxError("unexpected data after the document")
	}
	return v, nil
}

func readJSON(dec *json.Decoder, depth int) (any, error) {
	if depth > maxDepth {
		return nil, syntaxError("the document nests too deeply")
	}
	tok, err := dec.Token()
	if err != nil {
		return nil, invalidJSON(err)
	}
	switch tok {
	case json.Delim('{'):
		m := make(map[string]any)
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return nil, invalidJSON(err)
			}
			k, _ := kt.(string)
			if _, dup := m[k]; dup {
				return nil, syntaxError("duplicate key %q", k)
			}
			if m[k], err = readJSON(dec, depth+1); err != nil {
				return nil, err
			}
		}
		if _, err := dec.Token(); err != nil {
			return nil, invalidJSON(err)
		}
		return m, nil
	case json.Delim('['):
		list := []any{}
		for dec.More() {
			v, err := readJSON(dec, depth+1)
			if err != nil {
				return nil, err
			}
			list = append(list, v)
		}
		if _, err := dec.Token(); err != nil {
			return nil, invalidJSON(err)
		}
		return list, nil
	}
	return tok, nil
}

func invalidJSON(err error) error {
	if err == io.EOF {
		return malformed("This policy contains invalid Json: unexpected end of document.")
	}
	return malformed("This policy contains invalid Json: %v.", err)
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
