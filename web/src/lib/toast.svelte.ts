/** Short messages in a corner (an ARIA live region): what an action did, or why it failed. */
import { message } from './api/client';

export interface Toast {
	id: number;
	kind: 'info' | 'error';
	text: string;
}

class Toasts {
	items = $state<Toast[]>([]);
	#next = 1;

	show(text: string, kind: Toast['kind'] = 'info', ms = 5000): void {
		const id = this.#next++;
		this.items.push({ id, kind, text });
		setTimeout(() => this.dismiss(id), kind === 'error' ? ms * 2 : ms);
	}

	error(e: unknown): void {
		this.show(message(e), 'error');
	}

	dismiss(id: number): void {
		this.items = this.items.filter((t) => t.id !== id);
	}
}

export const toasts = new Toasts();

/** Run an action, report its failure as a toast; true when it succeeded. */
export async function attempt(action: () => Promise<unknown>, done?: string): Promise<boolean> {
	try {
		await action();
		if (done) toasts.show(done);
		return true;
	} catch (e) {
		toasts.error(e);
		return false;
	}
}
