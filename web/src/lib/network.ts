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
