//! Devices that are not there, and tensors on different devices, are errors that say so, never panics.

use engine::{ops, DType, Device, Error, Tensor};

#[test]
fn cuda_requested_without_a_gpu_is_an_error_with_the_reason() {
    if engine::cuda::device_count() > 0 {
        // With a GPU, an ordinal past the last device is the missing device.
        let missing = format!("cuda:{}", engine::cuda::device_count());
        let err = Device::parse(&missing).unwrap_err();
        assert!(matches!(err, Error::NoCuda(_)), "{err}");
        return;
    }
    for s in ["cuda", "cuda:0", "cuda:3"] {
        let err = Device::parse(s).unwrap_err();
        assert!(matches!(err, Error::NoCuda(_)), "{s}: {err}");
        assert!(!err.to_string().is_empty());
    }
    assert_eq!(Device::parse("auto").unwrap(), Device::Cpu);
    // Making a tensor on a device that does not exist fails the same way.
    let err = Tensor::zeros([4], DType::F32, &Device::Cuda(0)).unwrap_err();
    assert!(matches!(err, Error::NoCuda(_)), "{err}");
    let err = Tensor::from_slice(&[1.0f32, 2.0], [2], &Device::Cpu).unwrap().to_device(&Device::Cuda(0)).unwrap_err();
    assert!(matches!(err, Error::NoCuda(_)), "{err}");
}

#[test]
fn device_strings_are_parsed_or_rejected() {
    assert_eq!(Device::parse("cpu").unwrap(), Device::Cpu);
    for bad in ["gpu", "cuda:x", "cuda0", ""] {
        assert!(Device::parse(bad).is_err(), "{bad:?} was accepted");
    }
}

#[test]
fn tensors_on_different_devices_are_an_error() {
    let Some(gpu) = engine::cuda::test_device() else { return };
    let a = Tensor::zeros([2, 3], DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::zeros([3, 2], DType::F32, &gpu).unwrap();
    let err = ops::matmul(&a, &b).unwrap_err();
    assert!(matches!(err, Error::DeviceMismatch { .. }), "{err}");
    let err = ops::add(&a, &ops::transpose(&b, 0, 1).unwrap()).unwrap_err();
    assert!(matches!(err, Error::DeviceMismatch { .. }), "{err}");
}
