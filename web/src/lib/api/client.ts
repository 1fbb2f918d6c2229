/** The API client. Paths, parameters and bodies are typed from the control plane's /openapi.json
 * (`schema.d.ts`, generated at build time), so the dashboard cannot drift from the API.
 *
 * The browser never holds the token: it is the `__Host-wrenn_session` cookie (HttpOnly), which the
 * control plane accepts only with the `X-Wrenn-Dashboard: 1` header sent here (CSRF-safe). */
import createClient from 'openapi-fetch';
import { goto } from '$app/navigation';
import type { paths } from './schema';

export const DASHBOARD_HEADER = { 'X-Wrenn-Dashboard': '1' } as const;

export const api = createClient<paths>({
	baseUrl: '',
	headers: DASHBOARD_HEADER,
	credentials: 'same-origin'
});

/** An error answer of the API: `{"error": {"code", "message"}}`. */
export class ApiError extends Error {
	constructor(
		readonly status: number,
		readonly code: string,
		message: string,
		readonly details: Record<string, unknown> = {}
	) {
		super(message);
	}
}

export function toApiError(status: number, body: unknown): ApiError {
	const error = (body as { error?: Record<string, unknown> } | undefined)?.error;
	if (error && typeof error === 'object') {
		const { code, message, ...details } = error;
		return new ApiError(status, String(code ?? 'error'), String(message ?? `HTTP ${status}`), details);
	}
	return new ApiError(status, 'error', `HTTP ${status}`);
}

let redirecting = false;

/** The data of an openapi-fetch call, or an ApiError thrown. A 401 (no or expired session) goes to
 * the sign-in page, coming back here afterwards. */
export async function call<T>(
	request: Promise<{ data?: T; error?: unknown; response: Response }>
): Promise<T> {
	const { data, error, response } = await request;
	if (response.ok) return data as T;
	if (response.status === 401 && !redirecting && !location.pathname.startsWith('/login')) {
		redirecting = true;
		const next = location.pathname + location.search;
		await goto(`/login?next=${encodeURIComponent(next)}`);
		redirecting = false;
	}
	throw toApiError(response.status, error);
}

/** For routes whose answer the OpenAPI document does not describe (bytes, or free-form objects). */
export async function raw(path: string, init: RequestInit = {}): Promise<Response> {
	const headers = new Headers(init.headers);
	for (const [k, v] of Object.entries(DASHBOARD_HEADER)) headers.set(k, v);
	const response = await fetch(path, { ...init, headers, credentials: 'same-origin' });
	if (!response.ok) {
		let body: unknown;
		try {
			body = await response.json();
		} catch {
			body = undefined;
		}
		throw toApiError(response.status, body);
	}
	return response;
}

export function message(e: unknown): string {
	if (e instanceof ApiError) return e.message;
	if (e instanceof Error) return e.message;
	return String(e);
}

/** `call` for routes the OpenAPI document leaves free-form (`dict[str, Any]`): their shapes are written
 * in types.ts, next to the route that answers them. */
export async function callAs<T>(request: Promise<{ data?: unknown; error?: unknown; response: Response }>): Promise<T> {
	return (await call(request)) as T;
}

/** POST a multipart form with upload progress (XMLHttpRequest reports it, fetch does not): the answer's
 * JSON (null if it has none), or an ApiError. */
export function postForm(path: string, form: FormData, onprogress?: (loaded: number, total: number) => void): Promise<unknown> {
	return new Promise((resolve, reject) => {
		const xhr = new XMLHttpRequest();
		xhr.open('POST', path);
		for (const [k, v] of Object.entries(DASHBOARD_HEADER)) xhr.setRequestHeader(k, v);
		xhr.upload.onprogress = (e) => onprogress?.(e.loaded, e.total);
		xhr.onload = () => {
			let body: unknown = null;
			try {
				body = JSON.parse(xhr.responseText);
			} catch {
				body = null;
			}
			if (xhr.status < 300) resolve(body);
			else reject(toApiError(xhr.status, body ?? undefined));
		};
		xhr.onerror = () => reject(new Error('the upload failed (network)'));
		xhr.send(form);
	});
}
