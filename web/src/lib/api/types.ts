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
export type AdminTemplate = S['AdminTemplate'];

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

export type Channel = S['ChannelOut'];
export type Delivery = S['DeliveryOut'];

/** GET and PATCH /v1/capsules/{id}/network (header values never shown: only their names) */
export interface NetworkView {
	capsule_id: string;
	allow_out: string[];
	deny_out: string[];
	dns_servers: string[] | null;
	allow_internet_access: boolean;
	allow_smtp: boolean;
	egress_bandwidth_kbps: number;
	rules: Record<string, string[]>;
	/** What the egress proxy lately refused (a running capsule's only). */
	events: { at: string; action: string; destination: string; port: number; name: string; reason: string }[];
	secrets_loaded: boolean | null;
}

/** GET /v1/templates/builds[/{id}] */
export interface Build {
	id: string;
	template_id: string;
	name: string;
	team_id: string;
	kind: string;
	status: string;
	steps: number;
	vcpus: number;
	memory_mb: number;
	disk_size_mb: number;
	size_bytes: number | null;
	error: string;
	failed_step: string;
	log_count: number;
	created_at: string;
	started_at: string | null;
	finished_at: string | null;
	logs?: BuildLog[];
}

export interface BuildLog {
	seq: number;
	time: string;
	level: string;
	step: string;
	message: string;
}

/** GET /v1/capsules/{id}/logs */
export interface ConsoleLine {
	timestamp: string;
	timestamp_ms: number;
	level: string;
	source: string;
	message: string;
}

/** GET /v1/capsules/stats */
export interface TeamStats {
	range: string;
	current: { running_count: number; vcpus_reserved: number; memory_mb_reserved: number; sampled_at: string };
	peaks: { running_count: number; vcpus: number; memory_mb: number };
	series: { labels: string[]; running: number[]; vcpus: number[]; memory_mb: number[] };
}

/** GET /v1/capsules/usage */
export interface TeamUsage {
	from: string;
	to: string;
	points: { date: string; cpu_minutes: number; ram_mb_minutes: number }[];
}
