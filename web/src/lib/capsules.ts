/** Capsule actions shared by the list and the detail page. */
import { api, call } from './api/client';
import type { Capsule, CapsuleCreate, Template } from './api/types';

export const TRANSITIONAL = ['pending', 'starting', 'hibernating'];
export const PAUSED = ['paused', 'hibernated'];

export function create(body: CapsuleCreate): Promise<Capsule> {
	return call(api.POST('/v1/capsules', { body }));
}

export function pause(id: string): Promise<Capsule> {
	return call(api.POST('/v1/capsules/{capsule_id}/pause', { params: { path: { capsule_id: id } } }));
}

export function resume(id: string): Promise<Capsule> {
	return call(api.POST('/v1/capsules/{capsule_id}/resume', { params: { path: { capsule_id: id } } }));
}

export function destroy(id: string): Promise<unknown> {
	return call(api.DELETE('/v1/capsules/{capsule_id}', { params: { path: { capsule_id: id } } }));
}

export function snapshot(id: string, name: string | null): Promise<Template> {
	return call(api.POST('/v1/snapshots', { body: { sandbox_id: id, name: name || null } }));
}

export function fork(id: string, count: number): Promise<Capsule[]> {
	return call(
		api.POST('/v1/capsules/{capsule_id}/fork', { params: { path: { capsule_id: id } }, body: { count } })
	);
}
