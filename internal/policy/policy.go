// Package policy parses, validates and evaluates AWS IAM policy documents:
// identity policies, role trust policies, session policies and resource
// policies. Services call Parse (or ParseTrust) when a policy is stored, and
// Evaluate when a request has to be authorized.
//
// It is written by hand: no maintained Go library evaluates IAM policies with
// AWS semantics (condition operators with IfExists and set qualifiers, policy
// variables, ARN-wise matching, the assumed-role principal chain), and the
// SDKs only build policies, they never decide on them.
//
// Semantics that AWS leaves implicit, and that this package chose:
//
//   - Negated condition operators (StringNotEquals, NotIpAddress, ArnNotLike,
//     ...) are the logical negation of their positive form. A missing key
//     therefore satisfies them, as the IAM documentation states, and so does
//     a context value that does not parse as the operator's type.
//   - Without ForAnyValue/ForAllValues a multivalued context key satisfies a
//     positive operator when any of its values does, and a negated operator
//     when none of its values satisfies the positive form.
//   - A policy variable whose key is missing (or has several values) and has
//     no default makes the element holding it match nothing: a Resource entry
//     grants nothing, a NotResource entry excludes nothing, a condition value
//     equals nothing. Variables are substituted only in documents with
//     Version "2012-10-17"; older documents keep "${...}" literally, as IAM
//     does. Substituted text is literal: a '*' in a user name is not a
//     wildcard.
//   - A principal is evaluated as the chain of identities it stands for: an
//     assumed-role session is the session, its role and its account; a user
//     is the user and its account. Principal matches when it names any
//     identity in the chain; NotPrincipal matches when some identity in the
//     chain is not named, so exempting a session from a Deny needs the
//     session ARN, the role ARN and the account, as the IAM documentation
//     requires.
//
// Parsing follows IAM's grammar and is strict where leniency would let a
// document mean something other than what it says: element names are
// case-sensitive, unknown elements and duplicate JSON keys are rejected, and
// values of typed condition operators (numbers, dates, booleans, IP
// addresses, base64) must parse, so a mistyped CIDR cannot silently disable
// a Deny.
package policy

import "strconv"

// Document is a parsed IAM policy document (identity policy, trust policy,
// session policy, or resource policy).
type Document struct {
	Version    string
	ID         string
	Statements []Statement
}

// Statement is one statement of a policy document. Absent elements are nil.
type Statement struct {
	Sid    string
	Effect string // "Allow" | "Deny"

	Principal    *Principals // nil when absent
	NotPrincipal *Principals // nil when absent

	Action, NotAction     []string
	Resource, NotResource []string

	// Condition maps operator -> key -> values. Values are strings; JSON
	// booleans and numbers keep their JSON text ("true", "10").
	Condition map[string]map[string][]string

	// literalVars is set by Parse for documents older than 2012-10-17, in
	// which "${...}" is not a policy variable. The zero value substitutes,
	// so statements built in Go get variables.
	literalVars bool
}

// Principals is the value of a Principal or NotPrincipal element.
type Principals struct {
	Any           bool // "Principal": "*"
	AWS           []string
	Service       []string
	Federated     []string
	CanonicalUser []string
}

// Request is one authorization question.
type Request struct {
	// Action is "service:Action", e.g. "iam:ListUsers".
	Action string
	// Resource is the ARN acted on, or "*" for actions without resources.
	Resource string
	// Principal is the caller: an IAM user, role, root or assumed-role
	// session ARN, or a service principal such as
	// "sagemaker.amazonaws.com". Empty for anonymous callers.
	Principal string
	// PrincipalAccount is the caller's 12-digit account. When empty it is
	// taken from the Principal ARN. Leave it empty for service principals.
	PrincipalAccount string
	// Context holds condition keys and their values. Key names match
	// case-insensitively, as in IAM.
	Context map[string][]string
}

// Decision is the outcome of Evaluate.
type Decision int

const (
	ImplicitDeny Decision = iota // nothing allowed the request
	Allow                        // a statement allowed it and none denied it
	ExplicitDeny                 // a Deny statement matched
)

func (d Decision) String() string {
	switch d {
	case ImplicitDeny:
		return "ImplicitDeny"
	case Allow:
		return "Allow"
	case ExplicitDeny:
		return "ExplicitDeny"
	}
	return "Decision(" + strconv.Itoa(int(d)) + ")"
}

// Evaluate evaluates policies for one request: an explicit Deny in any
// statement of any document wins; otherwise the request is allowed when some
// Allow statement matches; otherwise it is implicitly denied. Statements that
// carry Principal or NotPrincipal are matched against req.Principal as well.
// Nil documents and statements whose Effect is neither Allow nor Deny are
// ignored.
//
// Evaluate answers for the documents it is given; combining identity,
// resource, boundary and session policies the way AWS does for a given
// request is the caller's job.
func Evaluate(docs []*Document, req Request) Decision {
	allowed := false
	for _, d := range docs {
		if d == nil {
			continue
		}
		for i := range d.Statements {
			s := &d.Statements[i]
			switch s.Effect {
			case "Deny":
				if s.matches(&req) {
					return ExplicitDeny
				}
			case "Allow":
				if !allowed && s.matches(&req) {
					allowed = true
				}
			}
		}
	}
	if allowed {
		return Allow
	}
	return ImplicitDeny
}

// Matches reports whether the statement applies to req: its action,
// resource, principal (when the statement has one) and conditions all match.
// The Effect is not consulted. A statement without Resource or NotResource
// (a trust policy statement) applies to any resource.
func (s *Statement) Matches(req Request) bool {
	return s.matches(&req)
}

func (s *Statement) matches(req *Request) bool {
	if !s.matchAction(req.Action) {
		return false
	}
	vars := !s.literalVars
	if !s.matchResource(req, vars) {
		return false
	}
	if s.Principal != nil && !s.Principal.matchesAny(req) {
		return false
	}
	if s.NotPrincipal != nil && !s.NotPrincipal.missesAny(req) {
		return false
	}
	for op, keys := range s.Condition {
		if !matchCondition(op, keys, req.Context, vars) {
			return false
		}
	}
	return true
}

func (s *Statement) matchAction(action string) bool {
	switch {
	case len(s.Action) > 0:
		return anyActionMatches(s.Action, action)
	case len(s.NotAction) > 0:
		return !anyActionMatches(s.NotAction, action)
	}
	return false
}

func anyActionMatches(patterns []string, action string) bool {
	for _, p := range patterns {
		if globMatch(p, nil, action, true) {
			return true
		}
	}
	return false
}

func (s *Statement) matchResource(req *Request, vars bool) bool {
	switch {
	case len(s.Resource) > 0:
		return anyResourceMatches(s.Resource, req, vars)
	case len(s.NotResource) > 0:
		return !anyResourceMatches(s.NotResource, req, vars)
	}
	return true
}

func anyResourceMatches(patterns []string, req *Request, vars bool) bool {
	for _, p := range patterns {
		lit := []bool(nil)
		if vars {
			var ok bool
			if p, lit, ok = expand(p, req.Context); !ok {
				continue
			}
		}
		if globMatch(p, lit, req.Resource, false) {
			return true
		}
	}
	return false
}
