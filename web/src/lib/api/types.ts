/** Names for the API's shapes. Those the OpenAPI document describes come from it; the few routes that
 * answer free-form objects are written out here, next to the route that answers them. */
import type { components } from './schema';

type S = components['schemas'];

export type Capsule = S['CapsuleOut'];
export type CapsuleCreate = S['CapsuleCreate'];
export type Template = S['TemplateOut'];
export type ApiKey = S['KeyOut'];
export type Team = S['TeamOut'];
export type Member = S['MemberOut'];
export type AuditEntry = S['AuditEntry'];
export type AuditPage = S['AuditPage'];
export type Host = S['HostOut'];
export type HostCreated = S['HostCreated'];
export type Session = S['Session'];
export type Provider = S['ProviderOut'];
export type AdminUser = S['AdminUser'];
export type AdminTeam = S['AdminTeam'];
export type AdminCapsule = S['AdminCapsule'];

/** GET /v1/me */
export interface Me {
	user_id: string;
	name: string;
	email: string;
	has_password: boolean;
	providers: string[];
	team_id: string;
	role: 'owner' | 'admin' | 'member';
	is_admin: boolean;
}

/** POST /v1/capsules/{id}/files/list */
export interface FileEntry {
	name: string;
	path: string;
	type: 'file' | 'directory' | 'symlink';
	size: number;
	mode: number;
	permissions: string;
	owner: string;
	group: string;
	modified_at: number;
	symlink_target?: string;
}

/** GET /v1/capsules/{id}/processes */
export interface Process {
	pid: number;
	tag: string;
	cmd: string;
	args: string[];
}

/** GET /v1/capsules/{id}/metrics */
export interface MetricPoint {
	timestamp_unix: number;
	cpu_pct: number;
	mem_bytes: number;
	disk_bytes: number;
}

/** POST /v1/capsules/{id}/exec (foreground) */
export interface ExecResult {
	stdout: string;
	stderr: string;
	exit_code: number;
	encoding: 'utf-8' | 'base64';
	timed_out: boolean;
}

export const METRIC_RANGES = ['5m', '10m', '1h', '2h', '6h', '12h', '24h'] as const;
export type MetricRange = (typeof METRIC_RANGES)[number];
