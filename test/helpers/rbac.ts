// The agent's RBAC as deploy/rbac.yaml grants it, and Kubernetes' rule matching, so that tests can
// check every request the real client made against the ClusterRole that will authorize it.
import { readFile } from 'node:fs/promises';
import { parseAllDocuments } from 'yaml';
import type { ExecutionContext } from 'ava';
import type { KubeApiServer, NonResourceRequestRecord, RequestRecord, ResourceAttributes } from '../servers/kube-api-server.js';

export interface PolicyRule {
  verbs: string[];
  apiGroups?: string[];
  resources?: string[];
  resourceNames?: string[];
  nonResourceURLs?: string[];
}

const RBAC_YAML = new URL('../../deploy/rbac.yaml', import.meta.url);

/** The rules of the ClusterRole that deploy/rbac.yaml binds to the agent's service account. */
export async function agentClusterRoleRules(): Promise<PolicyRule[]> {
  const documents = parseAllDocuments(await readFile(RBAC_YAML, 'utf8')).map((document) => document.toJS() as { kind: string; metadata: { name: string } });
  const binding = documents.find((doc) => doc.kind === 'ClusterRoleBinding') as { roleRef: { kind: string; name: string } } | undefined;
  if (!binding) throw new Error('deploy/rbac.yaml has no ClusterRoleBinding');
  const role = documents.find((doc) => doc.kind === binding.roleRef.kind && doc.metadata.name === binding.roleRef.name) as { rules?: PolicyRule[] } | undefined;
  if (!role) throw new Error(`deploy/rbac.yaml has no ${binding.roleRef.kind} ${binding.roleRef.name}`);
  return role.rules ?? [];
}

const matches = (granted: string[] | undefined, wanted: string): boolean => (granted ?? []).some((one) => one === '*' || one === wanted);

/** rbac/v1 RuleAllows for a resource request: verb, group, resource[/subresource], resourceNames. */
function ruleAllows(rule: PolicyRule, request: ResourceAttributes): boolean {
  const resource = request.subresource === undefined ? request.resource : `${request.resource}/${request.subresource}`;
  const resourceMatches = (rule.resources ?? []).some(
    (granted) => granted === '*' || granted === resource || (request.subresource !== undefined && granted === `*/${request.subresource}`),
  );
  const nameMatches = (rule.resourceNames ?? []).length === 0 || (request.name !== undefined && rule.resourceNames!.includes(request.name));
  return matches(rule.verbs, request.verb) && matches(rule.apiGroups, request.apiGroup) && resourceMatches && nameMatches;
}

/** rbac/v1 RuleAllows for a non-resource request: verb and path (a trailing * matches a prefix). */
function ruleAllowsPath(rule: PolicyRule, request: NonResourceRequestRecord): boolean {
  const pathMatches = (rule.nonResourceURLs ?? []).some((url) => url === '*' || url === request.path || (url.endsWith('*') && request.path.startsWith(url.slice(0, -1))));
  return matches(rule.verbs, request.verb) && pathMatches;
}

export function describeRequest(request: ResourceAttributes | NonResourceRequestRecord): string {
  if ('path' in request) return `${request.verb} ${request.path}`;
  const group = request.apiGroup === '' ? 'core' : request.apiGroup;
  return `${request.verb} ${group}/${request.resource}${request.subresource === undefined ? '' : `/${request.subresource}`}`;
}

/** The requests no rule allows, described as "verb group/resource[/subresource]" or "verb path". */
export function deniedRequests(rules: PolicyRule[], requests: { resources: ResourceAttributes[]; nonResources: NonResourceRequestRecord[] }): string[] {
  const denied = [
    ...requests.resources.filter((request) => !rules.some((rule) => ruleAllows(rule, request))),
    ...requests.nonResources.filter((request) => !rules.some((rule) => ruleAllowsPath(rule, request))),
  ];
  return [...new Set(denied.map(describeRequest))].sort();
}

/** Each verb × group × resource a rule grants that none of the requests used. */
export function unusedGrants(rules: PolicyRule[], requests: ResourceAttributes[]): string[] {
  const unused: string[] = [];
  for (const rule of rules) {
    for (const verb of rule.verbs) {
      for (const apiGroup of rule.apiGroups ?? []) {
        for (const resource of rule.resources ?? []) {
          const grant: PolicyRule = { verbs: [verb], apiGroups: [apiGroup], resources: [resource], ...(rule.resourceNames && { resourceNames: rule.resourceNames }) };
          if (!requests.some((request) => ruleAllows(grant, request))) unused.push(`${verb} ${apiGroup === '' ? 'core' : apiGroup}/${resource}`);
        }
      }
    }
  }
  return unused;
}

/**
 * After a scenario: every request its API servers saw carried the bearer token and is one
 * deploy/rbac.yaml lets the agent's service account make. Returns the requests, for a file that
 * also checks that every grant was used.
 */
export async function assertRequestsAuthorized(t: ExecutionContext, servers: readonly KubeApiServer[], options: { eachMadeRequests: boolean }): Promise<RequestRecord[]> {
  const rules = await agentClusterRoleRules();
  const requests: RequestRecord[] = [];
  for (const server of servers) {
    t.is(server.unauthenticated, 0, 'requests without the bearer token');
    if (options.eachMadeRequests) t.true(server.requests.length > 0, 'the scenario made requests');
    t.deepEqual(deniedRequests(rules, { resources: server.requests, nonResources: server.nonResourceRequests }), [], 'requests deploy/rbac.yaml does not allow');
    requests.push(...server.requests);
  }
  return requests;
}
