package iam

import (
	"context"
	"testing"
)

// A role that does not trust sagemaker.amazonaws.com must not be passable to
// SageMaker: on AWS, iam:PassRole is one gate and the role's trust policy
// the other (SageMaker's sts:AssumeRole fails). convoy mints the role's
// credentials itself (sts.RoleCredentials), so AuthorizePassRole checks
// both: a user allowed to pass roles broadly must not run a job as a role
// whose trust policy names only an administrator, and may pass one that
// trusts SageMaker.
func TestPassRoleRequiresServiceTrust(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	p := userWithKey(t, s, "dev")
	// The role trusts only the admin user, never SageMaker.
	trust := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"` + s.UserARN(AdminUser) + `"},"Action":"sts:AssumeRole"}]}`
	role, err := s.CreateRole(ctx, Role{Name: "admin-only", Trust: trust})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Attach(ctx, KindRole, "admin-only", AdministratorAccess); err != nil {
		t.Fatal(err)
	}
	// A common broad grant: pass any role, but only to SageMaker.
	pass := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iam:PassRole","Resource":"*","Condition":{"StringEquals":{"iam:PassedToService":"sagemaker.amazonaws.com"}}}]}`
	if err := s.PutInlinePolicy(ctx, KindUser, "dev", "pass", pass); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AuthorizePassRole(ctx, p, role.ARN, "sagemaker.amazonaws.com"); err == nil {
		t.Fatal("AuthorizePassRole handed role " + role.ARN + ", whose trust policy does not trust sagemaker.amazonaws.com, to SageMaker: " +
			"its credentials are then minted by sts.RoleCredentials for the job (escalation to the role's AdministratorAccess)")
	}
	sm := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"sagemaker.amazonaws.com"},"Action":"sts:AssumeRole"}]}`
	exec, err := s.CreateRole(ctx, Role{Name: "exec", Trust: sm})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.AuthorizePassRole(ctx, p, exec.ARN, "sagemaker.amazonaws.com"); err != nil {
		t.Errorf("a role that trusts SageMaker: %v", err)
	}
}
