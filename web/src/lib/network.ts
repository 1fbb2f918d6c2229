/** Egress policies as forms show them: lists as text, one entry a line. */
import type { components } from './api/schema';

export type NetworkBody = components['schemas']['NetworkBody'];

export function lines(text: string): string[] {
	return text
		.split(/[\n,]/)
		.map((s) => s.trim())
		.filter(Boolean);
}

/** The `/v1` policy body of a form's fields (rules left out: they keep their value, or none at create). */
export function policyBody(f: {
	allowOut: string;
	denyOut: string;
	dns: string;
	internet: boolean;
	smtp: boolean;
	bandwidth: number;
}): NetworkBody {
	const dns = lines(f.dns);
	return {
		allow_out: lines(f.allowOut),
		deny_out: lines(f.denyOut),
		dns_servers: dns.length ? dns : null,
		allow_internet_access: f.internet,
		allow_smtp: f.smtp,
		egress_bandwidth_kbps: Number(f.bandwidth) || 0
	};
}

/** A rule's header value that keeps the stored one (the API never shows a secret back). */
export const KEEP = '***';

/** The `rules` of a PATCH body: every domain's headers as stored (`KEEP`), except `domain`, which gets
 * `headers` (or is dropped when they are null). */
export function rulesBody(
	stored: Record<string, string[]>,
	domain: string,
	headers: Record<string, string> | null
): NonNullable<NetworkBody['rules']> {
	const out: NonNullable<NetworkBody['rules']> = {};
	for (const [d, names] of Object.entries(stored)) {
		if (d !== domain) out[d] = [{ transform: { headers: Object.fromEntries(names.map((n) => [n, KEEP])) } }];
	}
	if (headers) out[domain] = [{ transform: { headers } }];
	return out;
}
